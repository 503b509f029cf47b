//! A JWT that came wrapped over lines, in `--autoro-compat` mode only.
//!
//! The AUTORO document's shell recipe builds `PAYLOAD` with `base64`, which
//! on Linux (GNU coreutils) wraps every 76 characters, and then signs
//! `"$HEADER.$PAYLOAD"` as it stands: the signature covers the wrapped
//! text, line feeds included. In compat mode the listener
//! ([`crate::head_watch`]) lets such an `Authorization` value through with
//! each of its line breaks turned into a space (a space is valid inside a
//! header value, a line feed is not, and no JWT holds one). Here the
//! spaces come out again: the parts decode from the joined text, and a
//! signature that matches the wrapped text (each space read as the line
//! feed it stood for) is accepted by re-signing the joined text with the
//! same key, so that every other check is jsonwebtoken's, as for any
//! token. A signature over the joined text (a signer that unwrapped before
//! signing) is checked as it is.

use std::borrow::Cow;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, crypto};

/// The token with the spaces of joined lines taken out, when compat mode
/// let a wrapped token through.
pub fn joined(token: &str, autoro_compat: bool) -> Cow<'_, str> {
    if autoro_compat && token.contains(' ') {
        Cow::Owned(token.replace(' ', ""))
    } else {
        Cow::Borrowed(token)
    }
}

/// `token` (as presented, with spaces for line breaks) in the form
/// jsonwebtoken checks: joined, and signed over the joined text if its
/// signature is `secret`'s over the wrapped text.
pub fn canonical(token: &str, secret: &[u8]) -> String {
    let joined = token.replace(' ', "");
    let Some((wrapped_message, signature)) = token.rsplit_once('.') else {
        return joined;
    };
    let signature = signature.replace(' ', "");
    let signed_text = wrapped_message.replace(' ', "\n");
    let matches = crypto::verify(
        &signature,
        signed_text.as_bytes(),
        &DecodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap_or(false);
    if !matches {
        return joined;
    }
    let Some((message, _)) = joined.rsplit_once('.') else {
        return joined;
    };
    match crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    ) {
        Ok(resigned) => format!("{message}.{resigned}"),
        Err(e) => {
            tracing::error!(error = %e, "cannot re-sign a wrapped token");
            joined
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(message: &str, secret: &[u8]) -> String {
        crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .unwrap()
    }

    #[test]
    fn a_token_signed_over_its_wrapped_text_is_re_signed_joined() {
        let secret = b"s3cret";
        let signature = sign("eyJh.eyJp\nbSIs\nIjog", secret);
        let presented = format!("eyJh.eyJp bSIs Ijog.{signature}");
        let expected = format!("eyJh.eyJpbSIsIjog.{}", sign("eyJh.eyJpbSIsIjog", secret));
        assert_eq!(canonical(&presented, secret), expected);
    }

    #[test]
    fn any_other_token_is_only_joined() {
        let secret = b"s3cret";
        // Signed over the joined text: stays as signed.
        let signature = sign("eyJh.eyJpbSIsIjog", secret);
        let presented = format!("eyJh.eyJp bSIs Ijog.{signature}");
        assert_eq!(
            canonical(&presented, secret),
            format!("eyJh.eyJpbSIsIjog.{signature}")
        );
        // Another key's signature over the wrapped text is not re-signed.
        let other = sign("eyJh.eyJp\nbSIs\nIjog", b"another");
        let presented = format!("eyJh.eyJp bSIs Ijog.{other}");
        assert_eq!(
            canonical(&presented, secret),
            format!("eyJh.eyJpbSIsIjog.{other}")
        );
        assert_eq!(joined("a b.c", false), "a b.c");
        assert_eq!(joined("a b.c", true), "ab.c");
    }
}
