//! Bounds on what one request may ask, so that no request can exhaust the controller; each
//! refusal names the field at fault.

use tonic::Status;

/// The largest request message the controller decodes. Requests are small: the largest is an
/// UpdateDns with MAX_RECORDS records.
pub const MAX_REQUEST_BYTES: usize = 256 << 10;
/// ADDRs in one attach or detach.
pub const MAX_ADDRS: usize = 64;
/// DNS records in one UpdateDns.
pub const MAX_RECORDS: usize = 256;
pub use weft_proto::names::MAX_CONTAINER_ID;

/// A peer name is a DNS name (what hostnames are): dot-separated labels of 1 to 63 letters,
/// digits and '-', not starting or ending with '-'; at most 253 bytes.
pub fn peer_name(name: &str) -> Result<(), Status> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(Status::invalid_argument(format!(
            "invalid peer name {name:?}: use a DNS name (labels of 1 to 63 letters, digits and \
             '-', at most 253 bytes)"
        )));
    }
    Ok(())
}

/// At most `max` items in the field `field` of a request.
pub fn count(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(Status::invalid_argument(format!(
            "{field}: {len} given, at most {max} per request"
        )));
    }
    Ok(())
}

/// A container reference of sane length.
pub fn container_id(id: &str) -> Result<(), Status> {
    if id.len() > MAX_CONTAINER_ID {
        return Err(Status::invalid_argument(format!(
            "container_id: {} bytes, at most {MAX_CONTAINER_ID}",
            id.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_are_dns_names() {
        for good in ["host1", "node-2.example.com", "A1"] {
            assert!(peer_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(64)] {
            let refused = peer_name(bad).unwrap_err();
            assert!(refused.message().starts_with("invalid peer name"), "{bad}");
        }
    }

    #[test]
    fn counts_are_bounded_naming_the_field() {
        assert!(count("addrs", MAX_ADDRS, MAX_ADDRS).is_ok());
        let refused = count("addrs", 65, MAX_ADDRS).unwrap_err();
        assert_eq!(refused.message(), "addrs: 65 given, at most 64 per request");
    }
}
