//! Requests on a stream connection: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS. The client encodes
//! them; [`decode_request`] is the server side (keel's embedded exchange, the simulator), answering
//! malformed requests with the error codes Binance uses.

use super::{Frame, error_code};
use serde::{Deserialize, Serialize};

/// A request the client sends on the stream connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    ListSubscriptions,
}

/// `{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}`; LIST_SUBSCRIPTIONS has no params.
pub fn encode_request(request: &Request, id: u64) -> String {
    let (method, params) = match request {
        Request::Subscribe(p) => ("SUBSCRIBE", Some(p)),
        Request::Unsubscribe(p) => ("UNSUBSCRIBE", Some(p)),
        Request::ListSubscriptions => ("LIST_SUBSCRIPTIONS", None),
    };
    let mut out = String::with_capacity(48 + params.map_or(0, |p| p.iter().map(|s| s.len() + 3).sum()));
    out.push_str("{\"method\":\"");
    out.push_str(method);
    out.push('"');
    if let Some(params) = params {
        out.push_str(",\"params\":[");
        for (i, p) in params.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            super::encode::push_json_str(&mut out, p);
        }
        out.push(']');
    }
    out.push_str(",\"id\":");
    out.push_str(&id.to_string());
    out.push('}');
    out
}

/// A request the server cannot serve, with the error reply Binance would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (error code {code})")]
pub struct RequestError {
    /// The request's id, when it could be read.
    pub id: Option<u64>,
    /// One of [`error_code`].
    pub code: i64,
    pub msg: String,
}

impl RequestError {
    fn invalid(id: Option<u64>, msg: impl Into<String>) -> RequestError {
        RequestError { id, code: error_code::INVALID_REQUEST, msg: format!("Invalid request: {}", msg.into()) }
    }

    /// The error reply frame (encode it with [`super::encode_frame`]).
    pub fn to_frame(&self) -> Frame {
        Frame::Error { id: self.id, code: self.code, msg: self.msg.clone() }
    }
}

/// Reads a client request: `{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}`.
/// Not on a hot path (a handful per connection), so it walks a `serde_json::Value`.
pub fn decode_request(text: &str) -> Result<(Request, u64), RequestError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| RequestError {
        id: None,
        code: error_code::INVALID_JSON,
        msg: format!("Invalid JSON: {e}"),
    })?;
    let Some(object) = value.as_object() else {
        return Err(RequestError::invalid(None, "expected a JSON object"));
    };
    let id = match object.get("id") {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().ok_or_else(|| RequestError::invalid(None, "request ID must be an unsigned integer"))?
        }
        None => return Err(RequestError::invalid(None, "missing field `id`")),
        Some(_) => return Err(RequestError::invalid(None, "request ID must be an unsigned integer")),
    };
    let method = match object.get("method") {
        Some(serde_json::Value::String(m)) => m.as_str(),
        None => return Err(RequestError::invalid(Some(id), "missing field `method`")),
        Some(_) => return Err(RequestError::invalid(Some(id), "method must be a string")),
    };
    let params = || -> Result<Vec<String>, RequestError> {
        match object.get("params") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| RequestError::invalid(Some(id), "params must be stream names (strings)"))
                })
                .collect(),
            None => Err(RequestError::invalid(Some(id), "missing field `params`")),
            Some(_) => Err(RequestError::invalid(Some(id), "params must be an array")),
        }
    };
    let request = match method {
        "SUBSCRIBE" => Request::Subscribe(params()?),
        "UNSUBSCRIBE" => Request::Unsubscribe(params()?),
        "LIST_SUBSCRIPTIONS" => Request::ListSubscriptions,
        other => {
            return Err(RequestError::invalid(
                Some(id),
                format!("unknown variant `{other}`, expected one of SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS"),
            ));
        }
    };
    Ok((request, id))
}
