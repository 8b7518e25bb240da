//! Whether a contact is usable for a channel: an email address, an E.164 number, a push
//! token, a webhook-reachable address.

use winback_proto::common::Channel;

/// The contact for `channel`, normalised, or why it cannot be used.
pub(crate) fn check(channel: Channel, contact: &str) -> Result<String, &'static str> {
    let contact = contact.trim();
    match channel {
        Channel::Email => email(contact),
        Channel::Sms => phone(contact),
        Channel::Push => {
            if contact.is_empty() || contact.len() > 4096 || contact.contains(char::is_whitespace) {
                Err("a push token without spaces is required")
            } else {
                Ok(contact.to_owned())
            }
        }
        Channel::Messenger | Channel::ManagerTask => {
            if contact.is_empty() || contact.len() > 512 {
                Err("an address of 1–512 characters is required")
            } else {
                Ok(contact.to_owned())
            }
        }
        Channel::Unspecified => Err("the channel is not set"),
    }
}

fn email(contact: &str) -> Result<String, &'static str> {
    let Some((local, domain)) = contact.rsplit_once('@') else {
        return Err("an email address needs an @");
    };
    let ok_local = !local.is_empty()
        && local.len() <= 64
        && !local.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',');
    let ok_domain = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain.len() <= 253
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    if ok_local && ok_domain {
        Ok(format!("{local}@{}", domain.to_lowercase()))
    } else {
        Err("not a valid email address")
    }
}

fn phone(contact: &str) -> Result<String, &'static str> {
    let digits = contact.strip_prefix('+').unwrap_or("");
    if (8..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
    {
        Ok(contact.to_owned())
    } else {
        Err("a phone number in E.164 (+ and 8–15 digits) is required")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_numbers() {
        assert_eq!(
            check(Channel::Email, " Anna@Example.RU ").unwrap(),
            "Anna@example.ru"
        );
        assert!(check(Channel::Email, "anna.example.ru").is_err());
        assert!(check(Channel::Email, "anna@localhost").is_err());
        assert!(check(Channel::Email, "a b@example.ru").is_err());
        assert_eq!(check(Channel::Sms, "+79161234567").unwrap(), "+79161234567");
        assert!(check(Channel::Sms, "89161234567").is_err());
        assert!(check(Channel::Sms, "+7916abc").is_err());
        assert!(check(Channel::Push, "").is_err());
        assert!(check(Channel::Unspecified, "x").is_err());
    }
}
