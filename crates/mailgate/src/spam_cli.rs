//! `mailgate spam train` and `mailgate spam eval`: build the spam plugin's model from a corpus
//! (native code, the same tokenizer the plugin runs) and measure the plugin itself, through the
//! plugin host, on held-out mail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate_message::ParsedMessage;
use mailgate_plugin_host::DataDecision;
use mailgate_spam::{Counts, Input, HEADERS, KEY_NHAM, KEY_NSPAM};

use crate::plugins::wit_envelope;

/// Every regular file in `dirs` (not recursive), sorted, so runs are repeatable.
fn corpus_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = vec![];
    for d in dirs {
        let rd = std::fs::read_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let mut here: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
        here.sort();
        files.extend(here);
    }
    Ok(files)
}

/// A corpus file as the gateway would receive it: without an mbox `From ` line, in CRLF.
pub fn read_message(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let body = if raw.starts_with(b"From ") {
        raw.iter().position(|&b| b == b'\n').map_or(&raw[..0], |n| &raw[n + 1..])
    } else {
        &raw[..]
    };
    Ok(mailgate_smtp::content::to_crlf(body))
}

/// The tokens of a message, read exactly as the plugin reads it through the host.
fn message_tokens(raw: Vec<u8>) -> Vec<String> {
    // The gateway would refuse a message over the structure limits; it teaches nothing.
    if mailgate_message::inspect(&raw, &Default::default()).is_err() {
        return vec![];
    }
    let msg = ParsedMessage::new(Arc::new(raw));
    let headers: Vec<(&str, String)> = HEADERS.iter().filter_map(|h| Some((*h, msg.header(h)?))).collect();
    let text = msg.text_body();
    let html = msg.html_body();
    mailgate_spam::tokens(&Input {
        subject: msg.subject(),
        headers: headers.iter().map(|(n, v)| (*n, v.as_str())).collect(),
        text: text.as_deref(),
        html: html.as_deref(),
    })
}

/// Trains a model from spam and ham directories; writes it as a data table (TSV).
pub fn train(spam: &[PathBuf], ham: &[PathBuf], out: &Path, min_count: u32) -> Result<String, String> {
    let mut counts: HashMap<String, Counts> = HashMap::new();
    let mut n = [0u32; 2];
    for (is_spam, dirs) in [(true, spam), (false, ham)] {
        for f in corpus_files(dirs)? {
            for t in message_tokens(read_message(&f)?) {
                let c = counts.entry(t).or_default();
                if is_spam {
                    c.spam += 1
                } else {
                    c.ham += 1
                }
            }
            n[usize::from(!is_spam)] += 1;
        }
    }
    if n[0] == 0 || n[1] == 0 {
        return Err(format!("need both spam and ham messages (got {} spam, {} ham)", n[0], n[1]));
    }
    let mut kept: Vec<(&String, &Counts)> = counts.iter().filter(|(_, c)| c.spam + c.ham >= min_count).collect();
    kept.sort_by(|a, b| a.0.cmp(b.0));
    let mut text = format!(
        "# mailgate spam model: {} spam, {} ham, {} tokens seen at least {min_count} times\n{KEY_NSPAM}\t{}\n{KEY_NHAM}\t{}\n",
        n[0],
        n[1],
        kept.len(),
        n[0],
        n[1]
    );
    for (t, c) in &kept {
        text.push_str(t);
        text.push('\t');
        text.push_str(&c.to_value());
        text.push('\n');
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, out))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(format!("trained on {} spam and {} ham messages: {} tokens → {}", n[0], n[1], kept.len(), out.display()))
}

/// What evaluation needs: the plugin, its model and config, and labelled directories.
pub struct EvalRun {
    pub wasm: PathBuf,
    pub model: PathBuf,
    /// The plugin's config table, as TOML text.
    pub config: Option<String>,
    pub spam: Vec<PathBuf>,
    pub ham: Vec<PathBuf>,
}

#[derive(Default)]
struct Tally {
    messages: usize,
    flagged: usize,
    time: Duration,
}

/// Runs every message through the spam plugin in the plugin host (one persistent session, one
/// transaction per message) and reports precision, recall, F1 and cost per message.
pub async fn eval(run: EvalRun) -> Result<String, String> {
    let mut entry = crate::plugin_cli::plugin_entry(&run.wasm, run.config.as_deref(), vec![])?;
    entry.data.insert("model".into(), run.model.clone());
    let plugins = crate::plugin_cli::load(entry)?;
    let mut chain = plugins.session("spam-eval", mailgate_config::DEFAULT_PIPELINE);
    let conn = crate::plugin_cli::test_conn("192.0.2.1", "eval.example");
    let mut groups: Vec<(String, bool, Tally)> = vec![];
    for (is_spam, dirs) in [(true, &run.spam), (false, &run.ham)] {
        for d in dirs.iter() {
            let mut tally = Tally::default();
            for f in corpus_files(std::slice::from_ref(d))? {
                let raw = read_message(&f)?;
                let env = wit_envelope("sender@example.org", vec!["rcpt@example.net".into()], false, false, None);
                chain.on_mail_from(&conn, env.clone()).await;
                let started = Instant::now();
                let (d, _) = chain.on_data(&conn, &Arc::new(env), Arc::new(raw)).await;
                tally.time += started.elapsed();
                tally.messages += 1;
                if matches!(d, DataDecision::Reply(_) | DataDecision::Quarantine(_) | DataDecision::Disconnect(_)) {
                    tally.flagged += 1;
                }
            }
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            groups.push((name, is_spam, tally));
        }
    }
    let sum = |spam: bool| {
        groups.iter().filter(|g| g.1 == spam).fold((0, 0), |(m, f), g| (m + g.2.messages, f + g.2.flagged))
    };
    let ((ns, tp), (nh, fp)) = (sum(true), sum(false));
    if ns == 0 || nh == 0 {
        return Err("need both --spam and --ham messages".into());
    }
    let precision = if tp + fp == 0 { 0.0 } else { tp as f64 / (tp + fp) as f64 };
    let recall = tp as f64 / ns as f64;
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    let total: Duration = groups.iter().map(|g| g.2.time).sum();
    let mut out = String::from("group              messages  flagged as spam\n");
    for (name, is_spam, t) in &groups {
        let label = if *is_spam { "spam" } else { "ham" };
        out += &format!(
            "{:<18} {:>8}  {:>6} ({:.2} %)\n",
            format!("{name} ({label})"),
            t.messages,
            t.flagged,
            100.0 * t.flagged as f64 / t.messages.max(1) as f64
        );
    }
    out += &format!(
        "\nspam recall {:.2} % ({tp}/{ns})   false positives on ham {:.2} % ({fp}/{nh})\n\
         precision {:.4}   recall {:.4}   F1 {:.4}\n\
         cost: {:.0} µs per message in the plugin (on-data through the plugin host, {} messages)\n",
        100.0 * recall,
        100.0 * fp as f64 / nh as f64,
        precision,
        recall,
        f1,
        total.as_secs_f64() * 1e6 / (ns + nh) as f64,
        ns + nh
    );
    Ok(out)
}
