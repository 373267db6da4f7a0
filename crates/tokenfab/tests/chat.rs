//! `tokenfab chat` driven through a pipe, as a script would: against a server's `--url`,
//! and with the model run in its own process; /reset, a `"""` block, a server's error, and
//! Ctrl-C during an answer.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{MODEL, Server};

/// The same question twice with a /reset between, then a block of two lines.
const SCRIPT: &str = "What is the capital of France?\n\
                      /reset\n\
                      What is the capital of France?\n\
                      \"\"\"\n\
                      Name one colour.\n\
                      /reset\n\
                      \"\"\"\n\
                      /exit\n\
                      This line is never read.\n";

fn chat(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenfab"));
    cmd.arg("chat")
        .args(args)
        .env_remove("TOKENFAB_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run_script(args: &[&str], script: &str) -> (String, String) {
    let mut child = chat(args).spawn().expect("spawn tokenfab chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The `prompt N tokens` of each answer's statistics line.
fn prompt_tokens(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.contains(" tokens/s"))
        .map(|l| {
            let n = l.rsplit("prompt ").next().unwrap();
            n.trim_end_matches(" tokens").parse().unwrap()
        })
        .collect()
}

/// Three answers: the first two the same, as a /reset makes them (temperature 0, the same
/// history), the third to the block, which holds a `/reset` as text.
fn check_script(stdout: &str, stderr: &str) {
    assert!(
        !stdout.contains('\x1b'),
        "no colour into a pipe: {stdout:?}"
    );
    let prompts = prompt_tokens(stderr);
    assert_eq!(prompts.len(), 3, "{stderr}");
    // The history after /reset is what it was at the start: the same prompt, token for
    // token. Without it, the second prompt would hold the first exchange too.
    assert_eq!(prompts[0], prompts[1], "{stderr}");
    assert!(stderr.contains("the conversation is forgotten"), "{stderr}");
    let first_twice = (1..=stdout.len() / 2)
        .filter(|&i| stdout.is_char_boundary(i) && stdout.is_char_boundary(2 * i))
        .any(|i| stdout[..i].ends_with('\n') && stdout[..i] == stdout[i..2 * i]);
    assert!(
        first_twice,
        "the answer after /reset differs from the first:\n{stdout}"
    );
    assert!(stdout.trim().len() > 4, "{stdout}");
}

#[test]
fn chat_with_a_server_by_url() {
    let server = Server::start(&[]);
    let url = server.url("/v1");
    let args = ["--url", &url, "--temperature", "0", "--max-tokens", "24"];
    let (stdout, stderr) = run_script(&args, SCRIPT);
    check_script(&stdout, &stderr);

    // /system replaces the template's default system prompt (SmolLM2's names itself) in
    // every request; /reset keeps it; /system alone removes it.
    let (_, stderr) = run_script(
        &args,
        "Hi\n/system You are a pirate.\n/reset\nHi\n/reset\nHi\n/system\n/reset\nHi\n",
    );
    let prompts = prompt_tokens(&stderr);
    assert_eq!(prompts.len(), 4, "{stderr}");
    assert!(
        prompts[1] != prompts[0] && prompts[2] == prompts[1] && prompts[3] == prompts[0],
        "{stderr}"
    );

    // A server's refusal is one line, and the chat goes on.
    let (stdout, stderr) = run_script(
        &["no-such-model", "--url", &url, "--max-tokens", "4"],
        "Hello\n/help\n",
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("404") && errors[0].contains("no-such-model"),
        "{stderr}"
    );
    assert!(
        stdout.contains("/reset"),
        "the help after the error: {stdout}"
    );
}

fn test_model() -> String {
    std::env::var("TOKENFAB_TEST_MODEL")
        .unwrap_or_else(|_| common::cached(MODEL).display().to_string())
}

#[test]
fn chat_with_the_model_run_here() {
    let model = test_model();
    let args = [
        &model,
        "--threads",
        "2",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
    ];
    let (stdout, stderr) = run_script(&args, SCRIPT);
    check_script(&stdout, &stderr);
}

/// Reads a child's pipe on a thread of its own, so the test can wait for what it shows.
fn collect(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Waits until what `rx` gave so far (appended to `seen`) satisfies `done`.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    seen: &mut String,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(s) => seen.push_str(&s),
            Err(e) => panic!("waiting for {what}: {e}; so far: {seen}"),
        }
    }
}

fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sequences the server's model is generating, from `/health`.
fn running(server: &Server) -> u64 {
    let mut n = None;
    common::run(async {
        let v: serde_json::Value = reqwest::get(server.url("/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        n = v["models"][0]["running"].as_u64();
    });
    n.expect("/health gives the model's running sequences")
}

/// Starts a long answer, stops it with SIGINT, then asks again at once: the chat answers
/// and leaves at /exit with success. With `server`, the stop must reach it too.
fn ctrl_c(args: &[&str], server: Option<&Server>) {
    let mut child = chat(args).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let (mut shown, mut noted) = (String::new(), String::new());

    if server.is_none() {
        // Before any answer (the model still loading): Ctrl-C must not end the chat either.
        wait_for(&err, &mut noted, "the model's loading", |s| {
            s.contains("loading")
        });
        interrupt(&child);
    }
    writeln!(
        stdin,
        "Write a very long story about a dragon, in many chapters."
    )
    .unwrap();
    wait_for(&out, &mut shown, "the answer's start", |s| s.len() > 20);
    if let Some(server) = server {
        assert_eq!(running(server), 1, "the answer is being generated");
    }
    interrupt(&child);
    wait_for(&err, &mut noted, "the stop", |s| s.contains("stopped"));
    let stopped_at = shown.len();
    if let Some(server) = server {
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(server) > 0 {
            assert!(Instant::now() < deadline, "the server still generates");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    writeln!(stdin, "Now say hello.\n/exit").unwrap();
    wait_for(&err, &mut noted, "the next answer", |s| {
        s.contains(" tokens/s")
    });
    let status = child.wait().unwrap();
    while let Ok(s) = out.recv_timeout(Duration::from_secs(5)) {
        shown.push_str(&s);
    }
    assert!(status.success(), "{status}\n{shown}\n{noted}");
    assert!(
        shown[stopped_at..].trim().len() > 1,
        "no answer after the stop: {shown}"
    );
    assert_eq!(noted.matches(" tokens/s").count(), 1, "{noted}");
}

#[test]
fn ctrl_c_stops_the_answer_not_the_chat() {
    let model = test_model();
    ctrl_c(&[&model, "--threads", "2", "--max-tokens", "4000"], None);
}

#[test]
fn ctrl_c_cancels_the_request_on_the_server() {
    let server = Server::start(&[]);
    let url = server.url("/v1");
    ctrl_c(&["--url", &url, "--max-tokens", "4000"], Some(&server));
}
