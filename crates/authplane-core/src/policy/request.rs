//! Reading what a decision needs from the request's headers: value by value, and cookie
//! pair by cookie pair, from the raw bytes. What cannot be read is skipped and the rest
//! kept, as browsers and RFC 6265 parsers do, so that one odd byte (a third-party cookie
//! in Latin-1, a header value in another encoding) never hides a token, a bucketing key
//! or a legacy session that is there.

use http::{HeaderMap, HeaderName, header};

/// The values of a header that read as UTF-8 text, trimmed and not empty, in order (a
/// request may repeat a header).
pub fn texts<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| simdutf8::basic::from_utf8(value.as_bytes()).ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// The non-empty values of the cookie `name`, from every `Cookie` header (HTTP/2 sends
/// one per cookie), as raw bytes: a caller that needs text checks it.
pub fn cookies<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| cookie_value(pair, name.as_bytes()))
        .filter(|value| !value.is_empty())
}

/// The first value of the cookie `name` that reads as UTF-8 text.
pub fn cookie_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookies(headers, name).find_map(|value| simdutf8::basic::from_utf8(value).ok())
}

/// The value of one `name=value` pair when its name is `name`; the value without the
/// surrounding whitespace and one pair of double quotes (RFC 6265's quoted form).
fn cookie_value<'p>(pair: &'p [u8], name: &[u8]) -> Option<&'p [u8]> {
    let equals = pair.iter().position(|b| *b == b'=')?;
    if pair[..equals].trim_ascii() != name {
        return None;
    }
    let value = pair[equals + 1..].trim_ascii();
    Some(
        value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: HeaderName, values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name.clone(), HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn one_unreadable_cookie_pair_hides_nothing_else() {
        let headers = with(
            header::COOKIE,
            &[b"_ga=caf\xe9; session_id=1; access_token=\"abc\"; =x; junk; a=b=c"],
        );
        assert_eq!(cookie_text(&headers, "session_id"), Some("1"));
        assert_eq!(cookie_text(&headers, "access_token"), Some("abc"));
        assert_eq!(cookie_text(&headers, "a"), Some("b=c"));
        // The odd pair itself is there, but not as text.
        assert_eq!(cookies(&headers, "_ga").next(), Some(&b"caf\xe9"[..]));
        assert_eq!(cookie_text(&headers, "_ga"), None);
        assert_eq!(cookie_text(&headers, "junk"), None);
    }

    #[test]
    fn every_cookie_header_is_read_and_empty_values_are_absent() {
        let headers = with(
            header::COOKIE,
            &[b"theme=dark", b"session_id=; x=\xff\xfe", b"session_id=s2"],
        );
        assert_eq!(cookie_text(&headers, "theme"), Some("dark"));
        assert_eq!(cookie_text(&headers, "session_id"), Some("s2"));
        assert_eq!(cookies(&headers, "missing").count(), 0);
    }

    #[test]
    fn a_header_value_that_is_not_text_hides_no_other_value() {
        let name = HeaderName::from_static("x-user-id");
        let headers = with(name.clone(), &[b"\xe9t\xe9", b"  ", "zoë".as_bytes()]);
        assert_eq!(texts(&headers, &name).collect::<Vec<_>>(), ["zoë"]);
    }
}
