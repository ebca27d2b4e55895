//! Reading answers from the person at the terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::process::{Command, Stdio};

/// Prints `question` on stderr and reads one line from stdin; `None` at end of input.
pub fn line(question: &str) -> std::io::Result<Option<String>> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer)? == 0 {
        return Ok(None);
    }
    Ok(Some(answer.trim_end_matches(['\r', '\n']).to_string()))
}

/// Like [`line`], without echo when stdin is a terminal (`stty -echo`).
pub fn password(question: &str) -> std::io::Result<Option<String>> {
    let tty = std::io::stdin().is_terminal();
    if tty {
        stty("-echo");
    }
    let answer = line(question);
    if tty {
        stty("echo");
        eprintln!();
    }
    answer
}

fn stty(arg: &str) {
    // Best effort: without stty the password is echoed, which is ugly but not wrong.
    let _ = Command::new("stty")
        .arg(arg)
        .stdin(Stdio::inherit())
        .status();
}
