//! `tokenfab models inspect FILE.gguf`: what a GGUF file holds and whether this build runs
//! it, read from the header alone (no weight is loaded, so a 70B file answers at once).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use tokenfab_engine::gguf::GgufFile;

/// The report printed for one file.
pub fn report(path: &Path) -> anyhow::Result<String> {
    let g = GgufFile::open(path)?;
    let arch = g.architecture().unwrap_or("<none>");
    let meta = |key: &str| g.get_u64(&format!("{arch}.{key}"));
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "file:          {}", path.display())?;
    if let Some(name) = g.get_str("general.name") {
        writeln!(w, "name:          {name}")?;
    }
    writeln!(w, "architecture:  {arch}")?;
    let params: u64 = g.tensors.iter().map(|t| t.n_elements()).sum();
    writeln!(w, "parameters:    {} ({params})", human(params))?;
    for (label, key) in [
        ("layers:       ", "block_count"),
        ("embedding:    ", "embedding_length"),
        ("context:      ", "context_length"),
    ] {
        if let Some(v) = meta(key) {
            writeln!(w, "{label} {v}")?;
        }
    }
    let heads = (
        meta("attention.head_count"),
        meta("attention.head_count_kv"),
    );
    if let (Some(h), kv) = heads {
        writeln!(w, "heads:         {h} (kv {})", kv.unwrap_or(h))?;
    }
    if let Some(window) = meta("attention.sliding_window") {
        writeln!(w, "sliding window: {window}")?;
    }
    writeln!(w, "weight types:  {}", types_by_count(&g))?;
    let template = if g.get_str("tokenizer.chat_template").is_some() {
        "yes (chat and completions)"
    } else {
        "no (completions only)"
    };
    writeln!(w, "chat template: {template}")?;
    match tokenfab_engine::model::check(&g) {
        Ok(()) => writeln!(w, "supported:     yes")?,
        Err(why) => writeln!(w, "supported:     no: {why}")?,
    }
    Ok(out)
}

/// `Q5_0 ×120, Q8_0 ×31, F32 ×61`: most common first, so the file's main format leads.
fn types_by_count(g: &GgufFile) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in &g.tensors {
        *counts.entry(t.ty.to_string()).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if v.is_empty() {
        return "none (no tensors)".into();
    }
    v.iter()
        .map(|(ty, n)| format!("{ty} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 134.5M, 1.5B.
fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn parameter_counts_read_like_model_names() {
        assert_eq!(human(134_515_008), "134.5M");
        assert_eq!(human(1_543_714_304), "1.5B");
        assert_eq!(human(4096), "4096");
    }
}
