//! Stop strings over streamed text: text that could still be the start of a stop string is held
//! back, so a client never sees any part of a stop string.

#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    /// The stop string that matched.
    stopped: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: None,
        }
    }

    /// The stop string that matched, once one did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Feeds a text delta; returns the text that is now safe to emit. After a stop string
    /// matched, returns the text before it and [`stopped`](Self::stopped) names it.
    pub fn push(&mut self, delta: &str) -> String {
        if self.stopped.is_some() {
            return String::new();
        }
        self.pending.push_str(delta);
        if let Some((cut, stop)) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at)
        {
            self.stopped = Some(stop.clone());
            let out = self.pending[..cut].to_owned();
            self.pending.clear();
            return out;
        }
        let hold = self.longest_partial_suffix();
        let emit_len = self.pending.len() - hold;
        let out = self.pending[..emit_len].to_owned();
        self.pending.drain(..emit_len);
        out
    }

    /// The text still held back, released when the generation ends without a match.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Bytes at the end of `pending` that are a proper prefix of some stop string.
    fn longest_partial_suffix(&self) -> usize {
        let text = &self.pending;
        let mut best = 0;
        for stop in &self.stops {
            for (len, _) in stop.char_indices().skip(1) {
                if len > best
                    && len <= text.len()
                    && text.is_char_boundary(text.len() - len)
                    && text.ends_with(&stop[..len])
                {
                    best = len;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            out += &m.push(d);
            if m.stopped().is_some() {
                return (out, true);
            }
        }
        out += &m.flush();
        (out, false)
    }

    #[test]
    fn stop_split_across_deltas_is_never_emitted() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D tail"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn held_back_text_is_released_when_it_stops_matching() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc EN"), "abc ");
        assert_eq!(m.push("x"), "ENx");
        assert_eq!(run(&["END"], &["no stop E"]), ("no stop E".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_safe() {
        assert_eq!(run(&["é!", "b"], &["aé!b"]), ("a".into(), true));
        let mut m = StopMatcher::new(vec!["b".into(), "é!".into()]);
        m.push("aé!b");
        assert_eq!(m.stopped(), Some("é!"), "the earliest match is named");
        assert_eq!(run(&["日本"], &["x日", "y"]), ("x日y".into(), false));
    }
}
