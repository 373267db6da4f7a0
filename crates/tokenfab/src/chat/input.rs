//! What the user types, turned into entries: messages (one line, `\`-continued lines, or a
//! `"""` block, ollama's convention) and `/` commands. The rules live in [`Assembler`],
//! apart from the terminal, so that tests can type at it.

use std::io::{self, BufRead, IsTerminal};

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

/// One complete thing the user typed.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Message(String),
    Command(Command),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Reset,
    /// A new system prompt; `None` removes it.
    System(Option<String>),
    Exit,
    /// A `/word` that is no command: refused rather than sent, so a mistyped command never
    /// reaches the model as a message.
    Unknown(String),
}

/// Collects lines until they make an entry.
#[derive(Default)]
pub struct Assembler {
    lines: Vec<String>,
    /// Inside a `"""` block, which only a line ending in `"""` closes.
    block: bool,
}

const FENCE: &str = r#"""""#;

impl Assembler {
    /// Takes one line (without its line end); the entry it completes, if any. Empty
    /// entries are skipped, as a shell skips an empty command line.
    pub fn push(&mut self, line: &str) -> Option<Entry> {
        if self.block {
            match line.strip_suffix(FENCE) {
                Some(last) => {
                    self.lines.push(last.to_owned());
                    self.block = false;
                    self.take()
                }
                None => {
                    self.lines.push(line.to_owned());
                    None
                }
            }
        } else if self.lines.is_empty()
            && let Some(first) = line.trim_start().strip_prefix(FENCE)
        {
            // `"""text"""` on one line is a whole block.
            match first.strip_suffix(FENCE) {
                Some(whole) => Self::message(whole.to_owned()),
                None => {
                    self.block = true;
                    self.lines.push(first.to_owned());
                    None
                }
            }
        } else if let Some(part) = line.strip_suffix('\\') {
            self.lines.push(part.to_owned());
            None
        } else if self.lines.is_empty() {
            match line.trim().strip_prefix('/') {
                Some(command) => Some(Entry::Command(Self::command(command))),
                None => Self::message(line.to_owned()),
            }
        } else {
            self.lines.push(line.to_owned());
            self.take()
        }
    }

    /// Whether lines are pending (the prompt says so).
    pub fn continuing(&self) -> bool {
        self.block || !self.lines.is_empty()
    }

    /// Drops what is pending (Ctrl-C at the prompt).
    pub fn clear(&mut self) {
        self.lines.clear();
        self.block = false;
    }

    /// What is pending when the input ends: sent, since piped input may lack the closing
    /// `"""` or end on a `\`.
    pub fn finish(&mut self) -> Option<Entry> {
        self.block = false;
        self.take()
    }

    fn take(&mut self) -> Option<Entry> {
        let text = std::mem::take(&mut self.lines).join("\n");
        Self::message(text)
    }

    fn message(text: String) -> Option<Entry> {
        (!text.trim().is_empty()).then_some(Entry::Message(text))
    }

    fn command(text: &str) -> Command {
        let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let rest = rest.trim();
        match word {
            "help" | "?" => Command::Help,
            "reset" | "clear" => Command::Reset,
            "system" => Command::System((!rest.is_empty()).then(|| rest.to_owned())),
            "exit" | "quit" | "bye" => Command::Exit,
            _ => Command::Unknown(format!("/{word}")),
        }
    }
}

/// What reading a line gave.
pub enum Read {
    Line(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    Eof,
}

/// Where lines come from: a line editor (history, cursor keys; Ctrl-C is a key there) on a
/// terminal, plain lines from a pipe or file otherwise, without prompts, for scripts and
/// tests.
pub enum Lines {
    Editor(Box<DefaultEditor>),
    Piped(io::StdinLock<'static>),
}

impl Lines {
    pub fn open() -> anyhow::Result<Lines> {
        let stdin = io::stdin();
        Ok(if stdin.is_terminal() {
            Lines::Editor(Box::new(DefaultEditor::new()?))
        } else {
            Lines::Piped(stdin.lock())
        })
    }

    pub fn interactive(&self) -> bool {
        matches!(self, Lines::Editor(_))
    }

    pub fn read(&mut self, prompt: &str) -> anyhow::Result<Read> {
        match self {
            Lines::Editor(editor) => match editor.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        editor.add_history_entry(line.as_str())?;
                    }
                    Ok(Read::Line(line))
                }
                Err(ReadlineError::Interrupted) => Ok(Read::Interrupted),
                Err(ReadlineError::Eof) => Ok(Read::Eof),
                Err(e) => Err(e.into()),
            },
            Lines::Piped(stdin) => {
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    return Ok(Read::Eof);
                }
                let end = line.trim_end_matches(['\n', '\r']).len();
                line.truncate(end);
                Ok(Read::Line(line))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(lines: &[&str]) -> (Vec<Entry>, bool) {
        let mut a = Assembler::default();
        let entries = lines.iter().filter_map(|l| a.push(l)).collect();
        (entries, a.continuing())
    }

    fn msg(s: &str) -> Entry {
        Entry::Message(s.into())
    }

    #[test]
    fn one_line_is_one_message_and_empty_lines_are_skipped() {
        assert_eq!(
            typed(&["Hello", "", "  ", "again"]),
            (vec![msg("Hello"), msg("again")], false)
        );
    }

    #[test]
    fn a_backslash_continues_the_line() {
        assert!(typed(&["one\\", "two\\"]).1);
        assert_eq!(
            typed(&["one\\", "two\\", "three"]).0,
            vec![msg("one\ntwo\nthree")]
        );
    }

    #[test]
    fn a_block_runs_between_fences_and_keeps_what_looks_like_commands() {
        let (entries, pending) = typed(&[r#"""""#, "/reset", "a\\", r#"b""""#, "next"]);
        assert_eq!(entries, vec![msg("\n/reset\na\\\nb"), msg("next")]);
        assert!(!pending);
        assert_eq!(
            typed(&[r#""""first"#, "second", r#"""""#]).0,
            vec![msg("first\nsecond\n")]
        );
        assert_eq!(typed(&[r#""""whole""""#]).0, vec![msg("whole")]);
        assert!(typed(&[r#"""""#, "open"]).1);
    }

    #[test]
    fn commands_are_recognised_on_a_line_of_their_own() {
        let (entries, _) = typed(&[
            "/help",
            "/reset",
            " /system  Be brief. ",
            "/system",
            "/exit",
            "/quit",
            "/nope x",
        ]);
        assert_eq!(
            entries,
            vec![
                Entry::Command(Command::Help),
                Entry::Command(Command::Reset),
                Entry::Command(Command::System(Some("Be brief.".into()))),
                Entry::Command(Command::System(None)),
                Entry::Command(Command::Exit),
                Entry::Command(Command::Exit),
                Entry::Command(Command::Unknown("/nope".into())),
            ]
        );
        // Continued, a `/` line is text.
        assert_eq!(typed(&["path:\\", "/etc"]).0, vec![msg("path:\n/etc")]);
    }

    #[test]
    fn clear_drops_and_finish_sends_what_is_pending() {
        let mut a = Assembler::default();
        assert_eq!(a.push(r#"""""#), None);
        a.push("dropped");
        a.clear();
        assert!(!a.continuing());
        assert_eq!(a.push("kept\\"), None);
        assert_eq!(a.finish(), Some(msg("kept")));
        assert_eq!(a.finish(), None);
    }
}
