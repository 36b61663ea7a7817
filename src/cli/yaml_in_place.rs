//! Changes values of one YAML document in its own text, as a person editing the file
//! would: the changed key's line is rewritten (or a line added, or a key's lines
//! removed), and every other byte — comments, blank lines, quoting, flow or block style
//! — stays as it was. A flow collection on the way (`rollout: {mode: Enforce}`) is
//! written again whole, in flow style.
//!
//! Written by hand rather than with a lossless YAML crate: the edits the commands make are
//! few (an annotation, a handful of `spec.rollout` fields), the crates that keep comments
//! are young, and the caller checks the result anyway: it reads the new text back and
//! falls back to rewriting the whole document when the two disagree.

use serde_yaml::Value;

/// One leaf of a merge patch: set the value at a path, or remove the key (`None`).
pub type Change = (Vec<String>, Option<Value>);

/// The leaf changes of an RFC 7386 merge patch: `null` removes, a mapping merges.
pub fn changes(patch: &Value) -> Vec<Change> {
    fn walk(value: &Value, path: &mut Vec<String>, out: &mut Vec<Change>) {
        let Value::Mapping(fields) = value else {
            out.push((path.clone(), Some(value.clone())));
            return;
        };
        for (key, field) in fields {
            let Some(key) = key.as_str() else { continue };
            path.push(key.to_owned());
            match field {
                Value::Null => out.push((path.clone(), None)),
                Value::Mapping(_) => walk(field, path, out),
                other => out.push((path.clone(), Some(other.clone()))),
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(patch, &mut Vec::new(), &mut out);
    out
}

/// `text` (one document) with `changes` made in place; `merged` is the whole document as
/// it must read afterwards (flow collections are written from it). `None` when the text
/// has a shape this does not edit; the caller then writes the document whole.
pub fn apply(text: &str, changes: &[Change], merged: &Value) -> Option<String> {
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut doc = Lines {
        lines: text.split_inclusive('\n').map(str::to_owned).collect(),
        newline,
    };
    for (path, value) in changes {
        doc.change(path, value.as_ref(), merged)?;
    }
    Some(doc.lines.concat())
}

struct Lines {
    lines: Vec<String>,
    newline: &'static str,
}

/// A key line: its indentation, the key, and where the text after its `:` begins.
struct KeyLine {
    indent: usize,
    key: String,
    after_colon: usize,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// A line that holds YAML content: not blank, not a comment, not a document marker.
fn is_content(line: &str) -> bool {
    let trimmed = line.trim();
    let marker = ["---", "..."].iter().any(|m| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    });
    !trimmed.is_empty() && !trimmed.starts_with('#') && !marker
}

fn key_line(line: &str) -> Option<KeyLine> {
    let indent = indent_of(line);
    let body = &line[indent..];
    let (key, rest_at) = if let Some(quoted) = body.strip_prefix('"') {
        // JSON's escapes are a subset of YAML's double-quoted ones.
        let mut escaped = false;
        let end = quoted.char_indices().find_map(|(i, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(i)
        })?;
        let key: String = serde_json::from_str(&body[..end + 2]).ok()?;
        (key, end + 2)
    } else if let Some(quoted) = body.strip_prefix('\'') {
        let mut chars = quoted.char_indices().peekable();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            if c == '\'' {
                if chars.peek().is_some_and(|(_, c)| *c == '\'') {
                    chars.next();
                } else {
                    break i;
                }
            }
            key.push(c);
        };
        (key, end + 2)
    } else {
        if body.starts_with(['-', '{', '[', '#', '&', '*', '!', '|', '>', '?']) {
            return None;
        }
        let colon = body
            .char_indices()
            .filter(|(_, c)| *c == ':')
            .find(|(i, _)| {
                let after = &body[i + 1..];
                after.is_empty() || after.starts_with([' ', '\t', '\r', '\n'])
            })
            .map(|(i, _)| i)?;
        (body[..colon].trim_end().to_owned(), colon)
    };
    let after_key = body[rest_at..].trim_start_matches(' ');
    let after_colon = after_key.strip_prefix(':')?;
    if !(after_colon.is_empty() || after_colon.starts_with([' ', '\t', '\r', '\n'])) {
        return None;
    }
    Some(KeyLine {
        indent,
        key,
        after_colon: line.len() - after_colon.len(),
    })
}

/// Splits the text after a key's `:` into its value and what follows it (a comment and
/// the line end), keeping the spacing before the comment.
fn split_value(rest: &str) -> (&str, &str) {
    let start = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    let body = &rest[start..];
    let end = match body.chars().next() {
        Some('"') => {
            let mut escaped = false;
            body.char_indices().skip(1).find_map(|(i, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes.then_some(i + 1)
            })
        }
        Some('\'') => body[1..].find('\'').map(|i| i + 2),
        _ => Some(0),
    }
    .unwrap_or(body.len());
    let comment = body[end..]
        .char_indices()
        .find(|(i, c)| *c == '#' && (end + i == 0 || body[..end + i].ends_with([' ', '\t'])))
        .map(|(i, _)| end + i);
    let line_end = body.len() - body.trim_end_matches(['\r', '\n']).len();
    let value_end = comment.unwrap_or(body.len() - line_end);
    let value = body[..value_end].trim_end();
    let tail = &body[value.len()..];
    (value, tail)
}

impl Lines {
    /// The root mapping: its first content line, the end, and its indentation.
    fn root(&self) -> Option<(usize, usize, usize)> {
        let first = self.lines.iter().position(|l| is_content(l))?;
        Some((first, self.lines.len(), indent_of(&self.lines[first])))
    }

    /// The end (exclusive) of the value of the key on line `at`: the lines indented
    /// deeper, and a block sequence at the key's own indentation, less trailing blank and
    /// comment lines (those belong to what follows).
    fn value_end(&self, at: usize, indent: usize, inline: bool, to: usize) -> usize {
        let mut end = at + 1;
        for j in at + 1..to {
            let line = &self.lines[j];
            if !is_content(line) {
                continue;
            }
            let deeper = indent_of(line) > indent;
            let item = !inline && indent_of(line) == indent && line.trim_start().starts_with('-');
            if !(deeper || item) {
                break;
            }
            end = j + 1;
        }
        end
    }

    fn find(&self, from: usize, to: usize, indent: usize, key: &str) -> Option<(usize, KeyLine)> {
        (from..to).find_map(|j| {
            let line = &self.lines[j];
            if !is_content(line) || indent_of(line) != indent {
                return None;
            }
            key_line(line).filter(|k| k.key == key).map(|k| (j, k))
        })
    }

    /// After the last content line in `from..to`.
    fn end_of_content(&self, from: usize, to: usize) -> usize {
        (from..to)
            .rev()
            .find(|&j| is_content(&self.lines[j]))
            .map_or(from, |j| j + 1)
    }

    fn change(&mut self, path: &[String], value: Option<&Value>, merged: &Value) -> Option<()> {
        let (mut from, mut to, mut indent) = self.root()?;
        for (depth, segment) in path.iter().enumerate() {
            let last = depth + 1 == path.len();
            let Some((at, key)) = self.find(from, to, indent, segment) else {
                let Some(value) = value else {
                    return Some(()); // Nothing to remove.
                };
                let insert_at = self.end_of_content(from, to);
                let lines = self.render_block(&path[depth..], value, indent)?;
                self.lines.splice(insert_at..insert_at, lines);
                return Some(());
            };
            let rest = self.lines[at][key.after_colon..].to_owned();
            let (inline, mut tail) = split_value(&rest);
            let mut end = self.value_end(at, key.indent, !inline.is_empty(), to);
            let flow = inline.starts_with(['{', '[']);
            let after_flow: String;
            if flow {
                if !last {
                    return self.rewrite_flow(at, key.after_colon, &path[..=depth], merged);
                }
                // The whole collection goes: through its closing bracket, which may be on
                // a later line, less indented.
                let (close_line, rest_of_line) = self.flow_close(at, key.after_colon)?;
                end = end.max(close_line + 1);
                after_flow = rest_of_line;
                tail = &after_flow;
            }
            if last {
                match value {
                    None => {
                        self.lines.drain(at..end);
                    }
                    Some(value) => {
                        let prefix = &self.lines[at][..key.after_colon];
                        let line = format!(
                            "{prefix} {}{}",
                            inline_value(value)?,
                            line_end(tail, self.newline)
                        );
                        self.lines.splice(at..end, [line]);
                    }
                }
                return Some(());
            }
            // A mapping on the way: descend into it, or fill it when it is empty.
            if !matches!(inline, "" | "null" | "~" | "Null" | "NULL") {
                return None;
            }
            let child = (at + 1..end).find(|&j| is_content(&self.lines[j]));
            match child {
                Some(j)
                    if key_line(&self.lines[j]).is_some()
                        && indent_of(&self.lines[j]) > key.indent =>
                {
                    (from, to, indent) = (at + 1, end, indent_of(&self.lines[j]));
                }
                Some(_) => return None,
                None => {
                    let Some(value) = value else { return Some(()) };
                    let prefix = self.lines[at][..key.after_colon].to_owned();
                    self.lines[at] = format!("{prefix}{}", line_end(tail, self.newline));
                    let lines = self.render_block(&path[depth + 1..], value, key.indent + 2)?;
                    self.lines.splice(at + 1..at + 1, lines);
                    return Some(());
                }
            }
        }
        None
    }

    /// The line on which the flow collection after the `:` of line `at` closes, and the
    /// text after its closing bracket there (a comment, the line end).
    fn flow_close(&self, at: usize, after_colon: usize) -> Option<(usize, String)> {
        let text = self.lines[at..].concat();
        let start = after_colon + text[after_colon..].find(['{', '['])?;
        let end = start + flow_end(&text[start..])?;
        let line = at + text[..end].matches('\n').count();
        let rest = text[end..].split_inclusive('\n').next().unwrap_or("");
        Some((line, rest.to_owned()))
    }

    /// Lines that set `path` to `value` under a mapping indented by `indent`.
    fn render_block(&self, path: &[String], value: &Value, indent: usize) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        for (depth, segment) in path.iter().enumerate() {
            let pad = " ".repeat(indent + 2 * depth);
            let key = super::manifest_edit::key_text(segment);
            if depth + 1 == path.len() {
                lines.push(format!(
                    "{pad}{key}: {}{}",
                    inline_value(value)?,
                    self.newline
                ));
            } else {
                lines.push(format!("{pad}{key}:{}", self.newline));
            }
        }
        Some(lines)
    }

    /// Writes the flow collection that starts after the `:` of line `at` again, from the
    /// node at `path` of the merged document.
    fn rewrite_flow(
        &mut self,
        at: usize,
        after_colon: usize,
        path: &[String],
        merged: &Value,
    ) -> Option<()> {
        let mut node = merged;
        for segment in path {
            node = node.get(segment.as_str())?;
        }
        let text = self.lines[at..].concat();
        let start = after_colon + text[after_colon..].find(['{', '['])?;
        let end = start + flow_end(&text[start..])?;
        let rewritten = format!("{}{}{}", &text[..start], flow(node)?, &text[end..]);
        // Replace the lines the collection spans; the rest of `text` is the lines after.
        let spanned = text[..end].matches('\n').count() + 1;
        let spanned = spanned.min(self.lines.len() - at);
        let kept: String = self.lines[at + spanned..].concat();
        let head = rewritten.strip_suffix(kept.as_str())?.to_owned();
        let head: Vec<String> = head.split_inclusive('\n').map(str::to_owned).collect();
        self.lines.splice(at..at + spanned, head);
        Some(())
    }
}

/// The length of the flow collection at the start of `text`, through its closing bracket.
fn flow_end(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => {
                if q == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            Some(_) => {}
            None => match c {
                '"' | '\'' if matches!(previous, ' ' | '\t' | '\n' | '{' | '[' | ',' | ':') => {
                    quote = Some(c);
                }
                '#' if matches!(previous, ' ' | '\t' | '\n') => {
                    // A comment inside a multi-line flow collection: skip to the line end.
                    while chars.next_if(|(_, c)| *c != '\n').is_some() {}
                }
                '{' | '[' => depth += 1,
                '}' | ']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            },
        }
        previous = c;
    }
    None
}

fn line_end(tail: &str, newline: &str) -> String {
    let trimmed = tail.trim_end_matches(['\r', '\n']);
    if trimmed.trim().is_empty() {
        newline.to_owned()
    } else {
        format!("{trimmed}{newline}")
    }
}

/// A value on one line: a scalar (strings double-quoted, whole numbers without a
/// fraction), or a collection in flow style.
fn inline_value(value: &Value) -> Option<String> {
    match value {
        Value::Mapping(_) | Value::Sequence(_) => flow(value),
        other => scalar(other),
    }
}

fn scalar(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        Value::String(s) => serde_json::to_string(s).ok()?,
        Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => return None,
    })
}

fn flow(value: &Value) -> Option<String> {
    Some(match value {
        Value::Mapping(fields) => {
            let mut parts = Vec::new();
            for (key, field) in fields {
                let key = super::manifest_edit::key_text(key.as_str()?);
                parts.push(format!("{key}: {}", flow(field)?));
            }
            format!("{{{}}}", parts.join(", "))
        }
        Value::Sequence(items) => {
            let items: Option<Vec<String>> = items.iter().map(flow).collect();
            format!("[{}]", items?.join(", "))
        }
        other => scalar(other)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(text: &str, patch: &str) -> Option<String> {
        let patch: Value = serde_yaml::from_str(patch).unwrap();
        let mut merged: Value = serde_yaml::from_str(text).unwrap();
        super::super::manifest_edit::merge_for_tests(&mut merged, &patch);
        apply(text, &changes(&patch), &merged)
    }

    const POLICY: &str = "# The payments policy: keep this comment\n\
apiVersion: authplane.io/v1alpha1\n\
kind: AuthPolicy\n\
metadata:\n  name: payments   # the service\n  namespace: shop\n\
spec:\n  audiences: [payments]\n  rollout:\n    mode: Enforce     # staged\n    steps:\n    - 10\n    - 50\n    stepEvery: 1h\n\
\n  # the legacy cookie\n  legacySession: {cookie: session_id}\n";

    #[test]
    fn a_value_is_set_where_it_stands_and_everything_else_stays() {
        let out = edit(POLICY, "spec: {rollout: {mode: Audit}}").unwrap();
        assert_eq!(
            out,
            POLICY.replace("mode: Enforce     # staged", "mode: \"Audit\"     # staged")
        );
    }

    #[test]
    fn a_missing_key_is_added_to_its_mapping() {
        let out = edit(POLICY, "spec: {rollout: {paused: true}}").unwrap();
        assert_eq!(
            out,
            POLICY.replace(
                "    stepEvery: 1h\n",
                "    stepEvery: 1h\n    paused: true\n"
            )
        );
        let out = edit(
            POLICY,
            "metadata: {annotations: {authplane.io/rotate-at: '2026-01-01T00:00:00Z'}}",
        )
        .unwrap();
        assert_eq!(
            out,
            POLICY.replace(
                "  namespace: shop\n",
                "  namespace: shop\n  annotations:\n    authplane.io/rotate-at: \"2026-01-01T00:00:00Z\"\n"
            )
        );
    }

    #[test]
    fn removed_keys_take_their_block_with_them() {
        let out = edit(
            POLICY,
            "spec: {rollout: {percentage: 0, steps: null, stepEvery: null, paused: null}}",
        )
        .unwrap();
        assert_eq!(
            out,
            POLICY.replace(
                "    steps:\n    - 10\n    - 50\n    stepEvery: 1h\n",
                "    percentage: 0\n"
            )
        );
    }

    #[test]
    fn a_flow_mapping_on_the_way_is_written_again_in_flow_style() {
        let text = "apiVersion: authplane.io/v1alpha1  # v1alpha1\nkind: SigningKey\nmetadata: {name: web, namespace: auth}  # the key\nspec:\n  algorithm: ES256\n";
        let out = edit(text, "metadata: {annotations: {a/b: x}}").unwrap();
        assert_eq!(
            out,
            text.replace(
                "metadata: {name: web, namespace: auth}  # the key",
                "metadata: {name: \"web\", namespace: \"auth\", annotations: {a/b: \"x\"}}  # the key"
            )
        );
    }

    #[test]
    fn an_existing_annotation_is_replaced_in_quoted_or_plain_form() {
        let text = "metadata:\n  annotations:\n    'authplane.io/revoke-kids': abc  # leaked\n    other: \"x\"\n  name: web\n";
        let out = edit(
            text,
            "metadata: {annotations: {authplane.io/revoke-kids: 'abc,def'}}",
        )
        .unwrap();
        assert_eq!(
            out,
            text.replace(
                "'authplane.io/revoke-kids': abc  # leaked",
                "'authplane.io/revoke-kids': \"abc,def\"  # leaked"
            )
        );
    }

    #[test]
    fn a_flow_value_is_replaced_or_removed_whole() {
        let text = "spec:\n  rollout:\n    steps: [10,\n      50]  # two\n    stepEvery: 1h\n    bucketBy: {header: X-User-Id}  # who\n";
        let out = edit(
            text,
            "spec: {rollout: {steps: null, bucketBy: {claim: sub}}}",
        )
        .unwrap();
        assert_eq!(
            out,
            "spec:\n  rollout:\n    stepEvery: 1h\n    bucketBy: {header: \"X-User-Id\", claim: \"sub\"}  # who\n"
        );
    }

    proptest::proptest! {
        /// A manifest is input: whatever its text, an edit returns (the caller reads the
        /// result back), it never panics.
        #[test]
        fn any_text_is_edited_or_left_without_a_panic(
            tokens in proptest::collection::vec(proptest::sample::select(vec![
                "metadata", "spec", "rollout", "annotations", "paused", "steps", "a/b", "x",
                ":", ": ", " ", "  ", "\n", "\r\n", "{", "}", "[", "]", ", ", "'", "\"", "\\",
                " #", "- ", "|", "---\n", "é",
            ]), 0..60),
        ) {
            let text = tokens.concat();
            let patch: Value = serde_yaml::from_str(
                "metadata: {annotations: {a/b: x}}\nspec: {rollout: {paused: true, steps: null}}",
            )
            .unwrap();
            let merged: Value = serde_yaml::from_str(&text).unwrap_or(Value::Null);
            let _ = apply(&text, &changes(&patch), &merged);
        }
    }

    #[test]
    fn shapes_it_does_not_edit_are_left_to_the_caller() {
        // A scalar where a mapping is needed.
        assert_eq!(
            edit("metadata: x\n", "metadata: {annotations: {a: b}}"),
            None
        );
    }
}
