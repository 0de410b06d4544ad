//! DNS names of containers (`attach --name`, a container's hostname): checked and put in one
//! form wherever they enter weft, so every agent serves the name the operator meant.

/// At most this many bytes in a name, as DNS allows (RFC 1035, without the final dot).
const MAX_NAME: usize = 253;
/// At most this many bytes in one label.
const MAX_LABEL: usize = 63;

/// The name in lower case without a final dot; an error names what is wrong with it.
pub fn normalize(name: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid DNS name \"{name}\": {why}");
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    if trimmed.len() > MAX_NAME {
        return Err(bad(&format!("longer than {MAX_NAME} bytes")));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(bad("it has an empty label"));
        }
        if label.len() > MAX_LABEL {
            return Err(bad(&format!(
                "label \"{label}\" is longer than {MAX_LABEL} bytes"
            )));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(&format!(
                "label \"{label}\" has a character other than a-z, 0-9 and -"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad(&format!("label \"{label}\" starts or ends with -")));
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_one_form() {
        assert_eq!(
            normalize("Bbox1.Weave.Local.").unwrap(),
            "bbox1.weave.local"
        );
        assert_eq!(normalize("my-test1").unwrap(), "my-test1");
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let long_label = "a".repeat(64);
        let long_name = ["a"; 127].join(".") + ".bb";
        for (name, why) in [
            ("", "it is empty"),
            (".", "it is empty"),
            ("a..b", "it has an empty label"),
            (
                "a_b.local",
                "label \"a_b\" has a character other than a-z, 0-9 and -",
            ),
            ("-a.local", "label \"-a\" starts or ends with -"),
            (
                long_label.as_str(),
                &format!("label \"{long_label}\" is longer than 63 bytes"),
            ),
            (long_name.as_str(), "longer than 253 bytes"),
        ] {
            assert_eq!(
                normalize(name).unwrap_err(),
                format!("invalid DNS name \"{name}\": {why}")
            );
        }
    }
}
