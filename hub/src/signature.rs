//! The one signature of what the hub and third parties send each other:
//! webhook triggers and signed wait callbacks in (`api/triggers.rs`,
//! `api/approvals.rs`) and notifications out (`notify.rs`). `Tasuki-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256(secret, "<t>." + body)>`, as Stripe and GitHub sign theirs.

pub const HEADER: &str = "tasuki-signature";

/// `v1`: the hex HMAC-SHA256 of `"<t>." + body`.
pub fn v1(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    crate::secrets::encode_hex(aws_lc_rs::hmac::sign(&key, &signed).as_ref())
}

/// Whether `signature` (the header's `v1`) signs `body` sent at `t` with
/// `secret`; compared in constant time.
pub fn matches(secret: &[u8], t: i64, body: &[u8], signature: &str) -> bool {
    let expected = v1(secret, t, body);
    aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), signature.as_bytes())
        .is_ok()
}

/// The header's value for `body` sent at `t`.
pub fn header_value(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", v1(secret, t, body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_what_the_readme_s_openssl_recipe_computes() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec -r
        assert_eq!(
            super::header_value(b"whsec", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=8ad37ba156048ae0e0a5533c75cdf26fee88b07f93cb57ee4c80adb053012032"
        );
    }

    #[test]
    fn matches_only_the_same_secret_time_and_body() {
        let good = super::v1(b"whsec", 7, b"{}");
        assert!(super::matches(b"whsec", 7, b"{}", &good));
        assert!(!super::matches(b"other", 7, b"{}", &good));
        assert!(!super::matches(b"whsec", 8, b"{}", &good));
        assert!(!super::matches(b"whsec", 7, b"{ }", &good));
        assert!(!super::matches(b"whsec", 7, b"{}", &good[..10]));
    }
}
