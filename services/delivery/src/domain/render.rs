//! Rendering message templates with minijinja, strict about undefined variables: a template
//! is rendered against every documented variable when it is saved, so a typo is an error
//! then and not when a customer's message goes out.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Value, json};
use winback_proto::common::Channel;
use winback_proto::delivery::MessageTemplate;

/// A rendered message.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Rendered {
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: String,
    pub(crate) json: String,
}

/// Why a template does not render: the template field and the engine's message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RenderError {
    pub(crate) part: &'static str,
    pub(crate) message: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Renders every part of `t` with `variables`.
pub(crate) fn render(t: &MessageTemplate, variables: &Value) -> Result<Rendered, RenderError> {
    let env = environment();
    let ctx = minijinja::Value::from(minijinja::value::Serde(variables));
    let part = |part: &'static str, name: &str, source: &str| -> Result<String, RenderError> {
        if source.is_empty() {
            return Ok(String::new());
        }
        env.render_named_str(name, source, ctx.clone())
            .map_err(|e| RenderError {
                part,
                message: describe(&e),
            })
    };
    Ok(Rendered {
        subject: part("subject", "subject.txt", &t.subject)?,
        text: part("text", "text.txt", &t.text)?,
        html: part("html", "body.html", &t.html)?,
        json: part("json", "payload.json", &t.json)?,
    })
}

fn describe(e: &minijinja::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// The variables every message can use, with sample values, plus the template's declared
/// extra variables (as strings). What `check` renders against. These are exactly what a
/// campaign step fills (campaigns: `facts.segment`, `coupon.*`; delivery: `customer.*`,
/// `unsubscribe_url`, `message_id`), so a template that saves renders at send time; the
/// list is documented in delivery.proto (MessageTemplate) and docs/delivery.md.
pub(crate) fn sample_variables(extra: &[String]) -> Value {
    let mut v = json!({
        "customer": { "customer_id": "c-1", "name": "Анна Иванова", "first_name": "Анна" },
        "facts": { "segment": "at_risk" },
        "coupon": {
            "code": "ABCD-EFGH-JKLM",
            "expires_at": "2026-06-03 12:00 (Europe/Moscow)",
            "expires_at_utc": "2026-06-03T09:00:00Z",
            "hours_left": 72
        },
        "unsubscribe_url": "https://t.example/u/token",
        "message_id": "m-1"
    });
    if let Some(map) = v.as_object_mut() {
        for name in extra {
            map.entry(name.clone())
                .or_insert_with(|| Value::String(format!("<{name}>")));
        }
    }
    v
}

/// Checks a template before it is stored: the parts its channel needs are there, and every
/// part renders against the documented variables. Returns the field and the reason.
pub(crate) fn check(t: &MessageTemplate) -> Result<(), (String, String)> {
    let channel = Channel::try_from(t.channel).unwrap_or(Channel::Unspecified);
    let need = |ok: bool, field: &str, why: &str| {
        if ok {
            Ok(())
        } else {
            Err((format!("template.{field}"), why.to_owned()))
        }
    };
    match channel {
        Channel::Unspecified => need(false, "channel", "is required")?,
        Channel::Email => {
            need(
                !t.subject.trim().is_empty(),
                "subject",
                "an email needs a subject",
            )?;
            need(
                !t.text.trim().is_empty() || !t.html.trim().is_empty(),
                "text",
                "an email needs a text or an HTML body",
            )?;
        }
        Channel::Sms | Channel::Push => need(
            !t.text.trim().is_empty(),
            "text",
            "is required for this channel",
        )?,
        Channel::Messenger | Channel::ManagerTask => need(
            !t.json.trim().is_empty() || !t.text.trim().is_empty(),
            "json",
            "a webhook message needs a JSON or a text body",
        )?,
    }
    for (field, value, limit) in [
        ("subject", &t.subject, 998),
        ("text", &t.text, 256 * 1024),
        ("html", &t.html, 1024 * 1024),
        ("json", &t.json, 256 * 1024),
    ] {
        need(value.len() <= limit, field, "is too long")?;
    }
    let rendered = render(t, &sample_variables(&t.extra_variables))
        .map_err(|e| (format!("template.{}", e.part), e.message))?;
    if !rendered.json.is_empty() {
        serde_json::from_str::<Value>(&rendered.json).map_err(|e| {
            (
                "template.json".to_owned(),
                format!("does not render to JSON: {e}"),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(subject: &str, html: &str) -> MessageTemplate {
        MessageTemplate {
            template_id: "t".into(),
            channel: Channel::Email as i32,
            locale: "ru".into(),
            subject: subject.into(),
            html: html.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_undefined_variable_is_an_error_when_the_template_is_saved() {
        let ok = email(
            "{{ customer.first_name }}, мы скучаем",
            "<p>Код {{ coupon.code }}, осталось {{ coupon.hours_left }} ч</p>",
        );
        assert_eq!(check(&ok), Ok(()));
        let typo = email("{{ customer.frist_name }}", "<p>x</p>");
        let (field, why) = check(&typo).unwrap_err();
        assert_eq!(field, "template.subject");
        assert!(why.contains("undefined"), "{why}");
        let declared = MessageTemplate {
            extra_variables: vec!["store_address".into()],
            ..email("Hi", "{{ store_address }}")
        };
        assert_eq!(check(&declared), Ok(()));
        let syntax = email("Hi", "{% if %}");
        assert_eq!(check(&syntax).unwrap_err().0, "template.html");
    }

    #[test]
    fn html_is_escaped_and_a_missing_variable_at_send_is_an_error() {
        let t = email("Hi {{ customer.name }}", "<b>{{ customer.name }}</b>");
        let vars = json!({"customer": {"name": "<script>"}});
        let r = render(&t, &vars).unwrap();
        assert_eq!(r.subject, "Hi <script>");
        assert_eq!(r.html, "<b>&lt;script&gt;</b>");
        let err = render(&t, &json!({})).unwrap_err();
        assert_eq!(err.part, "subject");
    }

    #[test]
    fn channels_need_their_parts() {
        let sms = MessageTemplate {
            channel: Channel::Sms as i32,
            ..Default::default()
        };
        assert_eq!(check(&sms).unwrap_err().0, "template.text");
        let hook = MessageTemplate {
            channel: Channel::ManagerTask as i32,
            json: "{\"call\": {{ customer.name }}}".into(),
            ..Default::default()
        };
        // JSON templates escape as JSON, so a string lands quoted.
        assert_eq!(check(&hook), Ok(()));
    }
}
