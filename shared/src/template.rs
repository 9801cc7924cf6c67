//! Cache-key templates such as `user:{pk}` or `user-email:{email}`.
//!
//! Parsed once at init; rendering is allocation-light and pure.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

/// A parsed template: literal text and `{name}` placeholders. `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` at byte {0}")]
    Unclosed(usize),
    #[error("empty placeholder `{{}}` at byte {0}")]
    Empty(usize),
    #[error("unmatched `}}` at byte {0} (write `}}}}` for a literal brace)")]
    Unmatched(usize),
    #[error("placeholder `{{{0}}}` may hold only letters, digits, `_`, `-` and `.`")]
    BadName(String),
    #[error("a template needs at least one placeholder, or every change would delete the same key")]
    NoPlaceholder,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let bytes = source.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    literal.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    literal.push('}');
                    i += 2;
                }
                b'{' => {
                    let close = source[i + 1..]
                        .find('}')
                        .ok_or(TemplateError::Unclosed(i))?;
                    let name = &source[i + 1..i + 1 + close];
                    if name.is_empty() {
                        return Err(TemplateError::Empty(i));
                    }
                    if !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    {
                        return Err(TemplateError::BadName(name.to_owned()));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(name.to_owned()));
                    i += close + 2;
                }
                b'}' => return Err(TemplateError::Unmatched(i)),
                _ => {
                    // Copy one whole UTF-8 character.
                    let ch = source[i..].chars().next().unwrap_or('\u{fffd}');
                    literal.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Placeholder(_))) {
            return Err(TemplateError::NoPlaceholder);
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The literal text before the first placeholder: every key this template renders
    /// starts with it (empty when the template starts with a placeholder).
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(l)) => l,
            _ => "",
        }
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders with `lookup`; `None` when a placeholder has no scalar value (the key does not
    /// exist for this image, so there is nothing to invalidate).
    pub fn render<'v, F>(&self, lookup: F) -> Option<String>
    where
        F: FnMut(&str) -> Option<std::borrow::Cow<'v, str>>,
    {
        let mut out = String::with_capacity(self.source.len() + 16);
        self.render_into(&mut out, lookup).then_some(out)
    }

    /// [`Template::render`] appended to `out` (a buffer reused across renders); `false`,
    /// with `out` as it was, when a placeholder has no scalar value.
    pub fn render_into<'v, F>(&self, out: &mut String, mut lookup: F) -> bool
    where
        F: FnMut(&str) -> Option<std::borrow::Cow<'v, str>>,
    {
        let start = out.len();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Placeholder(name) => match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.truncate(start);
                        return false;
                    }
                },
            }
        }
        true
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn renders_placeholders_and_escaped_braces() {
        let t = Template::parse("u:{pk}:{{x}}:{sk}").unwrap();
        let got = t.render(|n| Some(Cow::Owned(n.to_uppercase()))).unwrap();
        assert_eq!(got, "u:PK:{x}:SK");
        assert_eq!(t.placeholders().collect::<Vec<_>>(), ["pk", "sk"]);
    }

    #[test]
    fn literal_prefix_is_the_text_before_the_first_placeholder() {
        assert_eq!(Template::parse("u:{pk}:x").unwrap().literal_prefix(), "u:");
        assert_eq!(
            Template::parse("{{a}}:{pk}").unwrap().literal_prefix(),
            "{a}:"
        );
        assert_eq!(Template::parse("{pk}:u").unwrap().literal_prefix(), "");
    }

    #[test]
    fn missing_value_renders_nothing() {
        let t = Template::parse("u:{pk}").unwrap();
        assert_eq!(t.render(|_| None), None);
    }

    #[test]
    fn non_ascii_literals_survive() {
        let t = Template::parse("größe:{pk}").unwrap();
        assert_eq!(t.render(|_| Some(Cow::Borrowed("1"))).unwrap(), "größe:1");
    }

    #[test]
    fn malformed_templates_are_errors() {
        assert_eq!(Template::parse("u:{pk"), Err(TemplateError::Unclosed(2)));
        assert_eq!(Template::parse("u:{}"), Err(TemplateError::Empty(2)));
        assert_eq!(Template::parse("u:}"), Err(TemplateError::Unmatched(2)));
        assert_eq!(Template::parse("static"), Err(TemplateError::NoPlaceholder));
        assert!(matches!(
            Template::parse("u:{a b}"),
            Err(TemplateError::BadName(_))
        ));
    }
}
