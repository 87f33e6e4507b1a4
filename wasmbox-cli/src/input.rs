//! Where the relay's lines come from: a line editor with a prompt and history when stdin is a
//! terminal, plain reading otherwise.

use anyhow::{Context, Result};
use rustyline::config::{Behavior, Config};
use rustyline::error::ReadlineError;
use std::io::{BufRead, IsTerminal, Write};

/// The prompt shown when stdin is a terminal.
const PROMPT: &str = "wasmbox> ";

/// One thing read from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A line, without its line break.
    Line(String),
    /// A line that is not valid UTF-8, so cannot be a `String` message.
    NotUtf8,
    /// End of input.
    End,
}

/// A source of lines.
pub trait LineSource {
    /// Reads the next line.
    ///
    /// # Errors
    /// If reading fails (other than at the end of input).
    fn next_line(&mut self) -> Result<Input>;
}

/// Whether stdin is a terminal, and so gets a prompt, line editing and history.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// The lines of stdin: with a line editor when it is a terminal, plainly otherwise.
///
/// # Errors
/// If the terminal cannot be set up.
pub fn stdin_lines() -> Result<Box<dyn LineSource>> {
    if !interactive() {
        return Ok(Box::new(Plain::new(std::io::stdin().lock(), None)));
    }
    if unsupported_terminal() {
        // The line editor would write its prompt to stdout; keep stdout for the guest.
        return Ok(Box::new(Plain::new(std::io::stdin().lock(), Some(PROMPT))));
    }
    // `PreferTerm` talks to /dev/tty, so the prompt and the echo never reach stdout even when
    // stdout is piped.
    let config = Config::builder()
        .behavior(Behavior::PreferTerm)
        .auto_add_history(false)
        .build();
    let editor =
        rustyline::DefaultEditor::with_config(config).context("cannot set up the terminal")?;
    Ok(Box::new(Terminal { editor }))
}

/// Terminals on which the line editor falls back to printing its prompt on stdout.
fn unsupported_terminal() -> bool {
    std::env::var("TERM").is_ok_and(|term| ["dumb", "cons25", "emacs"].contains(&term.as_str()))
}

/// Lines read with a line editor: prompt, editing, in-memory history.
struct Terminal {
    editor: rustyline::DefaultEditor,
}

impl LineSource for Terminal {
    fn next_line(&mut self) -> Result<Input> {
        loop {
            match self.editor.readline(PROMPT) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        // The history is in memory; failing to add to it changes nothing.
                        let _ = self.editor.add_history_entry(line.as_str());
                    }
                    return Ok(Input::Line(line));
                }
                // Ctrl-C drops the line being typed, as in a shell; Ctrl-D ends.
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => return Ok(Input::End),
                Err(e) => return Err(e).context("cannot read from the terminal"),
            }
        }
    }
}

/// Lines read plainly from a reader, with an optional prompt on stderr.
#[derive(Debug)]
pub struct Plain<R> {
    reader: R,
    prompt: Option<&'static str>,
    buffer: Vec<u8>,
}

impl<R: BufRead> Plain<R> {
    /// Reads lines from `reader`, showing `prompt` (on stderr) before each.
    pub fn new(reader: R, prompt: Option<&'static str>) -> Self {
        Plain {
            reader,
            prompt,
            buffer: Vec::new(),
        }
    }
}

impl<R: BufRead> LineSource for Plain<R> {
    fn next_line(&mut self) -> Result<Input> {
        if let Some(prompt) = self.prompt {
            let mut stderr = std::io::stderr();
            let _ = stderr.write_all(prompt.as_bytes());
            let _ = stderr.flush();
        }
        self.buffer.clear();
        let read = self
            .reader
            .read_until(b'\n', &mut self.buffer)
            .context("cannot read stdin")?;
        if read == 0 {
            return Ok(Input::End);
        }
        if self.buffer.last() == Some(&b'\n') {
            self.buffer.pop();
            if self.buffer.last() == Some(&b'\r') {
                self.buffer.pop();
            }
        }
        Ok(match String::from_utf8(std::mem::take(&mut self.buffer)) {
            Ok(line) => Input::Line(line),
            Err(_) => Input::NotUtf8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lines_with_any_line_break() -> Result<()> {
        let mut lines = Plain::new(&b"up\r\n\ndown\n\xff\xfe\nlast"[..], None);
        assert_eq!(lines.next_line()?, Input::Line("up".into()));
        assert_eq!(lines.next_line()?, Input::Line(String::new()));
        assert_eq!(lines.next_line()?, Input::Line("down".into()));
        assert_eq!(lines.next_line()?, Input::NotUtf8);
        assert_eq!(lines.next_line()?, Input::Line("last".into()));
        assert_eq!(lines.next_line()?, Input::End);
        Ok(())
    }
}
