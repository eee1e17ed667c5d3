//! Errors as the client sees them: an HTTP status and a JSON body
//! `{"error": {"code", "message", "pointer"?, "smtp"?, "recipients"?}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{RcptReceipt, SmtpReply, SubmitError};

/// An error answer (boxed: errors are rare, and `Result`s stay small on the good path).
#[derive(Debug, Clone)]
pub struct ApiError(Box<Detail>);

impl std::ops::Deref for ApiError {
    type Target = Detail;
    fn deref(&self) -> &Detail {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut Detail {
        &mut self.0
    }
}

/// What an error answer says. `code` is a stable machine-readable name; `message` is for people.
#[derive(Debug, Clone)]
pub struct Detail {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, as a JSON pointer (RFC 6901), e.g. `/to/2/email`.
    pub pointer: Option<String>,
    /// The SMTP reply behind a policy refusal.
    pub smtp: Option<SmtpReply>,
    /// Each recipient's refusal, when all were refused.
    pub recipients: Vec<RcptReceipt>,
    /// Seconds until a retry may succeed (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError(Box::new(Detail {
            status,
            code,
            message: message.into(),
            pointer: None,
            smtp: None,
            recipients: vec![],
            retry_after: None,
        }))
    }

    /// 400 for the field at `pointer`.
    pub fn field(pointer: impl Into<String>, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message);
        e.pointer = Some(pointer.into());
        e
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(retry_after);
        e
    }

    pub fn too_large(limit: u64) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the request exceeds {limit} octets"))
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut e = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(p) = &self.pointer {
            e["pointer"] = p.clone().into();
        }
        if let Some(s) = &self.smtp {
            e["smtp"] = serde_json::to_value(s).unwrap_or_default();
        }
        if !self.recipients.is_empty() {
            e["recipients"] = serde_json::to_value(&self.recipients).unwrap_or_default();
        }
        serde_json::json!({ "error": e })
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::Refused(r) if r.is_transient() => {
                let mut a = ApiError::unavailable(format!("refused for now: {}", r.text), 60);
                a.code = "deferred";
                a.smtp = Some((&r).into());
                a
            }
            SubmitError::Refused(r) => {
                let mut a = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", r.text.to_string());
                a.smtp = Some((&r).into());
                a
            }
            // Every recipient refused for now (4xx: greylisting, a policy that failed): the
            // request may succeed later, as a transient refusal of the message does.
            SubmitError::NoRecipients(rcpts)
                if rcpts.iter().all(|r| r.smtp.as_ref().is_some_and(|s| s.code / 100 == 4)) =>
            {
                let mut a = ApiError::unavailable("every recipient was refused for now", 60);
                a.code = "deferred";
                a.recipients = rcpts;
                a
            }
            SubmitError::NoRecipients(rcpts) => {
                let mut a = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "refused",
                    "no recipient can be sent to (refused or suppressed)",
                );
                a.recipients = rcpts;
                a
            }
            SubmitError::Unavailable(r) => {
                let mut a = ApiError::unavailable(r.text.to_string(), 30);
                a.smtp = Some((&r).into());
                a
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
