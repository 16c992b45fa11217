//! The documents' links hold: every relative link in a Markdown file of the repository names a
//! file that exists and, with a `#fragment`, a heading of that file (GitHub's anchors: lower
//! case, punctuation dropped, spaces as hyphens). Links to the web are not followed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if !name.starts_with('.') && !matches!(name, "target" | "node_modules") {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The text outside fenced code blocks and inline code, where links are links.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            // Inline code spans: drop every other backtick-separated piece.
            out.extend(line.split('`').step_by(2).flat_map(|piece| [piece, " "]));
            out.push('\n');
        }
    }
    out
}

/// The anchors GitHub gives the headings of `markdown`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    markdown
        .lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            !fenced && line.starts_with('#')
        })
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// The targets of `[text](target)` links in `text`.
fn links(text: &str) -> Vec<String> {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").expect("regex");
    link.captures_iter(text).map(|c| c[1].to_string()).collect()
}

#[test]
fn relative_links_resolve() {
    let mut files = Vec::new();
    markdown_files(Path::new(ROOT), &mut files);
    files.sort();
    assert!(files.len() > 5, "found only {files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let markdown = std::fs::read_to_string(file).expect("readable");
        for target in links(&prose(&markdown)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let linked = if path.is_empty() { file.clone() } else { file.parent().expect("dir").join(path) };
            let shown = file.strip_prefix(ROOT).unwrap_or(file).display();
            if !linked.exists() {
                broken.push(format!("{shown}: {target} (no such file)"));
                continue;
            }
            if let Some(fragment) = fragment.filter(|_| linked.extension().is_some_and(|e| e == "md")) {
                let text = std::fs::read_to_string(&linked).expect("readable");
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{shown}: {target} (no heading with that anchor)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_reads_links_and_anchors_as_github_does() {
    let text = "A [link](docs/a.md#two-words), `[code](not-a-link)`, [web](https://x.y).\n\
                ```\n[fenced](not-either)\n```\n";
    assert_eq!(links(&prose(text)), ["docs/a.md#two-words", "https://x.y"]);
    let headings =
        "# Title\n## Two Words\n### `hookline run` flags\n#### HooklineDown\n```\n# not a heading\n```\n";
    let found = anchors(headings);
    let expected = ["title", "two-words", "hookline-run-flags", "hooklinedown"];
    assert_eq!(found, expected.iter().map(|s| s.to_string()).collect());
}
