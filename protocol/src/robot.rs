//! Robot names: what a workflow's `workflow_robots` pins it to, and what a
//! robot registers as.

pub const MAX_ROBOT_NAME_LEN: usize = 64;

/// Checks a robot name: 1 to 64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit. Names end up in URLs, logs and file
/// names, so they are kept plain.
pub fn check_robot_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a robot name cannot be empty".into());
    }
    if name.len() > MAX_ROBOT_NAME_LEN {
        return Err(format!(
            "a robot name has at most {MAX_ROBOT_NAME_LEN} characters, this one has {}",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "a robot name may hold only ASCII letters, digits, `.`, `_` and `-`, not {c:?}"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("a robot name starts with a letter or a digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_robot_name("standard-1").is_ok());
        assert!(check_robot_name("sunaba_2.local").is_ok());
        assert!(check_robot_name("").is_err());
        assert!(check_robot_name("-x").is_err());
        assert!(check_robot_name("a b").is_err());
        assert!(check_robot_name(&"a".repeat(65)).is_err());
    }
}
