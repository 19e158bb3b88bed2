//! The HTML report: one self-contained page that draws a trace's paths.
//!
//! [`HtmlWriter`] is an [`Output`] like the others: it collects the records into the report's
//! data ([`collect`], [`model`]) and, when the trace ends, writes the page ([`page`]): the
//! data as JSON, the script that draws it and its style, all inline, under a
//! Content-Security-Policy that allows only that script and that style, so that the page
//! makes no request at all. The page is written to a temporary file next to the destination
//! and renamed over it: a report is whole or absent.

mod collect;
pub mod model;
mod page;

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

pub use collect::{Collector, PACKETS_PER_FLOW};
pub use page::render;

use super::{Output, RunStats};
use crate::{correlate::Record, names::NameTable};

/// Flows kept in detail unless told otherwise.
pub const DETAIL_LIMIT: usize = 500;

/// Writes the report to a file when the trace ends.
pub struct HtmlWriter {
    collector: Option<Collector>,
    path: PathBuf,
}

impl HtmlWriter {
    /// A report titled `title`, written to `path` when the trace ends, with at most
    /// `detail_limit` flows in detail.
    pub fn new(path: &Path, title: String, detail_limit: usize) -> Self {
        HtmlWriter {
            collector: Some(Collector::new(title, detail_limit)),
            path: path.to_owned(),
        }
    }
}

impl Output for HtmlWriter {
    fn record(&mut self, record: &Record, names: &NameTable) -> io::Result<()> {
        if let Some(collector) = &mut self.collector {
            collector.record(record, names);
        }
        Ok(())
    }

    fn stats(&mut self, stats: &RunStats) -> io::Result<()> {
        let Some(collector) = self.collector.take() else {
            return Ok(());
        };
        let page = render(&collector.finish(stats)).map_err(io::Error::other)?;
        write_whole(&self.path, page.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it to `path`: readers see the
/// old file or the whole new one, never a part.
pub fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let mut temporary = path.to_owned();
    temporary.set_file_name(format!(
        ".{}.{}.partial",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = super::create_private(&temporary)
        .map_err(io::Error::other)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// The report's file must be creatable: its directory exists, and it is not a directory.
pub fn check_destination(path: &std::path::Path) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::other(format!(
            "{} is a directory: name the report's file (e.g. {}/report.html)",
            path.display(),
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        return Err(io::Error::other(format!(
            "cannot write {}: the directory {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}
