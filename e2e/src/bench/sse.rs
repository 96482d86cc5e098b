//! Server-sent events framing: turns the bytes of a streaming response, as they arrive in
//! arbitrary pieces, into the payloads of its `data:` lines. Knows nothing about OpenAI JSON.

/// Accumulates bytes and yields each complete `data:` payload once its line has ended.
#[derive(Debug, Default)]
pub struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    /// Feeds the next piece of the body; returns the `data:` payloads it completed, in order.
    /// Comments, `event:`/`id:` fields and blank lines are skipped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            if let Some(payload) = data_payload(&line) {
                payloads.push(payload);
            }
        }
        payloads
    }

    /// The payload of a last line that ended without a newline, if any.
    pub fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.pending);
        data_payload(&line)
    }
}

fn data_payload(line: &[u8]) -> Option<String> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches(['\n', '\r']);
    let rest = line.strip_prefix("data:")?;
    Some(rest.strip_prefix(' ').unwrap_or(rest).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_across_pieces_and_crlf() {
        let mut sse = SseLines::default();
        assert!(sse.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            sse.push(b":1}\r\n\r\n: comment\ndata:[DO"),
            vec!["{\"a\":1}"]
        );
        assert_eq!(sse.push(b"NE]\n\nevent: x\n"), vec!["[DONE]"]);
        assert_eq!(sse.finish(), None);
    }

    #[test]
    fn unterminated_last_line_is_returned_by_finish() {
        let mut sse = SseLines::default();
        assert!(sse.push(b"data: tail").is_empty());
        assert_eq!(sse.finish().as_deref(), Some("tail"));
    }
}
