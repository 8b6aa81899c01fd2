//! The syntax of names, label keys and values, as Kubernetes checks
//! them (RFC 1123 labels and subdomains, RFC 1035 labels, qualified
//! names). Used by validation and by selector parsing alike.

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// RFC 1123 label: what a namespace, a container or a volume is called.
pub fn dns_label_error(s: &str) -> Option<String> {
    (!is_dns_label(s)).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character (at most 63 characters)"
            .to_string()
    })
}

/// RFC 1123 subdomain: what most objects are called.
pub fn dns_subdomain_error(s: &str) -> Option<String> {
    (!is_dns_subdomain(s)).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
         or '.', and must start and end with an alphanumeric character (at most 253 characters)"
            .to_string()
    })
}

/// A path segment: what RBAC objects are called (`system:node` has a
/// colon); anything but `.`, `..`, and names with `/` or `%`.
pub fn path_segment_error(s: &str) -> Option<String> {
    if s == "." || s == ".." {
        return Some(format!("may not be '{s}'"));
    }
    ["/", "%"]
        .into_iter()
        .find(|c| s.contains(c))
        .map(|c| format!("may not contain '{c}'"))
}

/// RFC 1035 label: what a Service is called (it must start with a letter,
/// since it becomes a DNS name).
pub fn dns1035_label_error(s: &str) -> Option<String> {
    let ok = is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase();
    (!ok).then(|| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with \
         an alphabetic character, and end with an alphanumeric character (at most 63 characters)"
            .to_string()
    })
}

pub(crate) fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name.
pub fn label_key_error(key: &str) -> Option<String> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(key),
    };
    (!ok).then(|| {
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and \
         end with an alphanumeric character (at most 63 characters), with an optional DNS \
         subdomain prefix and '/'"
            .to_string()
    })
}

pub fn label_value_error(value: &str) -> Option<String> {
    (!value.is_empty() && !is_qualified_name_part(value)).then(|| {
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
         or '.', and must start and end with an alphanumeric character (at most 63 characters)"
            .to_string()
    })
}

/// IANA service name (a named port): at most 15 characters, lower case
/// alphanumerics and '-', at least one letter, no leading, trailing or
/// doubled '-'.
pub fn port_name_error(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    (!ok).then(|| {
        "must be no more than 15 characters, contain only lowercase alphanumerics and '-', \
         contain at least one letter, and not begin, end or double '-'"
            .to_string()
    })
}
