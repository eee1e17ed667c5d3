//! `message`: read access to the message during on-data, through a resource handle.

use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};

use super::ParsedMessage;
use crate::bindings::mailgate::plugin::{message, types};

/// The guest's handle type for `message` (see `with:` in the bindgen).
pub struct MessageHandle(pub Arc<ParsedMessage>);

/// The resources handed to the guest: the message, while on-data runs.
pub struct MessageState {
    pub table: ResourceTable,
}

impl MessageState {
    pub(super) fn new() -> MessageState {
        MessageState { table: ResourceTable::new() }
    }
}

impl types::Host for MessageState {}

/// Largest read a plugin gets in one call.
const MAX_READ: u32 = 1 << 20;

impl message::Host for MessageState {}

impl message::HostMessage for MessageState {
    fn header(&mut self, m: Resource<MessageHandle>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.header(&name))
    }
    fn header_all(&mut self, m: Resource<MessageHandle>, name: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&m)?.0.header_values(Some(&name)).into_iter().map(|(_, v)| v).collect())
    }
    fn headers(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.table.get(&m)?.0.header_values(None))
    }
    fn subject(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.subject().map(str::to_string))
    }
    fn from(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.from_address())
    }
    fn text_body(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.text_body())
    }
    fn html_body(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.html_body())
    }
    fn raw_size(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&m)?.0.raw().len() as u64)
    }
    fn read(&mut self, m: Resource<MessageHandle>, offset: u64, len: u32) -> wasmtime::Result<Vec<u8>> {
        let raw = self.table.get(&m)?.0.raw();
        let start = (offset.min(raw.len() as u64)) as usize;
        let end = start.saturating_add(len.min(MAX_READ) as usize).min(raw.len());
        Ok(raw[start..end].to_vec())
    }
    fn drop(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<()> {
        self.table.delete(m)?;
        Ok(())
    }
}
