//! add-header: adds one configured header field to every message at on-data.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct AddHeader {
    /// Header field name, e.g. `X-Mailgate-Plugin`.
    name: String,
    /// Header field value (one line).
    value: String,
}

impl Filter for AddHeader {
    fn init(&mut self) -> Result<(), String> {
        self.name = config::get_or("name", "X-Mailgate-Plugin");
        self.value = config::get_or("value", "add-header");
        // RFC 5322 field name: printable ASCII except ':'.
        if self.name.is_empty() || !self.name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
        {
            return Err(format!("config key `name` = {:?} is not a header field name", self.name));
        }
        if self.value.contains(['\r', '\n']) {
            return Err("config key `value` must be one line".into());
        }
        Ok(())
    }

    fn on_data(&mut self, _conn: &ConnectionInfo, _env: &Envelope, _msg: &Message) -> DataResult {
        DataResult::next().with(Modification::add_header(&self.name, &self.value))
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(AddHeader);
