//! The served model's tokenizer, over the server's own `/tokenize` and `/detokenize` (vLLM's
//! and llama.cpp's servers both have them): what `fused-bench` uses without `--tokenizer`, as
//! `vllm bench serve` falls back to the served model's tokenizer. Calls are synchronous for the
//! dataset and summary code: each one is sent to a worker thread that owns its own runtime and
//! HTTP client, and the caller waits for the answer (sampling and counting happen before and
//! after the measured run, never during it).
//!
//! Must not: be used while requests are being measured (it blocks its caller).

use std::sync::mpsc;
use std::thread::JoinHandle;

use serde_json::{Value, json};

use crate::bench::BenchError;

/// Ids above this are not probed for the vocabulary size.
const MAX_VOCAB: u32 = 1 << 22;

enum Job {
    Encode(String, mpsc::Sender<Result<Vec<u32>, BenchError>>),
    Decode(Vec<u32>, mpsc::Sender<Result<String, BenchError>>),
}

/// A connection to a server's tokenizer routes.
pub struct ServerTokenizer {
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    base_url: String,
}

impl std::fmt::Debug for ServerTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTokenizer")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl ServerTokenizer {
    /// Connects to `base_url`'s `/tokenize` for `model`, checking it answers.
    pub fn connect(base_url: &str, model: &str, api_key: Option<&str>) -> Result<Self, BenchError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let worker = Worker {
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key: api_key.map(str::to_owned),
        };
        let handle = std::thread::Builder::new()
            .name("server-tokenizer".into())
            .spawn(move || worker.run(inbox))
            .map_err(|e| BenchError::Tokenizer(format!("starting its thread: {e}")))?;
        let tokenizer = Self {
            jobs: Some(jobs),
            worker: Some(handle),
            base_url: base_url.to_owned(),
        };
        tokenizer.encode("hello world").map_err(|e| {
            BenchError::Tokenizer(format!(
                "no --tokenizer given and the server's /tokenize does not answer ({e}); pass \
                 --tokenizer (a GGUF, tokenizer.json or HF directory)"
            ))
        })?;
        Ok(tokenizer)
    }

    /// Where the ids come from (recorded in results).
    pub fn source(&self) -> String {
        format!("{}/tokenize", self.base_url)
    }

    fn call<T>(&self, job: impl FnOnce(mpsc::Sender<T>) -> Job) -> Result<T, BenchError> {
        let (reply, answer) = mpsc::channel();
        let gone = || BenchError::Tokenizer("the tokenizer thread stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job(reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())
    }

    /// Ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, BenchError> {
        self.call(|reply| Job::Encode(text.to_owned(), reply))?
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, BenchError> {
        self.call(|reply| Job::Decode(ids.to_vec(), reply))?
    }

    /// The vocabulary size: the first id `/detokenize` refuses (binary search).
    pub fn vocab_size(&self) -> Result<u32, BenchError> {
        if self.decode(&[0]).is_err() {
            return Err(BenchError::Tokenizer(
                "the server's /detokenize refuses id 0".into(),
            ));
        }
        let (mut known, mut refused) = (0u32, MAX_VOCAB);
        while refused - known > 1 {
            let mid = known + (refused - known) / 2;
            match self.decode(&[mid]) {
                Ok(_) => known = mid,
                Err(_) => refused = mid,
            }
        }
        Ok(known + 1)
    }
}

impl Drop for ServerTokenizer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

struct Worker {
    base_url: String,
    model: String,
    api_key: Option<String>,
}

impl Worker {
    fn run(self, inbox: mpsc::Receiver<Job>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let message = format!("starting a runtime: {error}");
                for job in inbox {
                    match job {
                        Job::Encode(_, reply) => {
                            let _ = reply.send(Err(BenchError::Tokenizer(message.clone())));
                        }
                        Job::Decode(_, reply) => {
                            let _ = reply.send(Err(BenchError::Tokenizer(message.clone())));
                        }
                    }
                }
                return;
            }
        };
        let http = reqwest::Client::new();
        for job in inbox {
            match job {
                Job::Encode(text, reply) => {
                    let _ = reply.send(runtime.block_on(self.encode(&http, &text)));
                }
                Job::Decode(ids, reply) => {
                    let _ = reply.send(runtime.block_on(self.decode(&http, &ids)));
                }
            }
        }
    }

    async fn post(
        &self,
        http: &reqwest::Client,
        route: &str,
        body: Value,
    ) -> Result<Value, BenchError> {
        let url = format!("{}/{route}", self.base_url);
        let error = |reason: String| BenchError::Server {
            url: url.clone(),
            reason,
        };
        let mut request = http.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| error(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| error(e.to_string()))?;
        if !status.is_success() {
            return Err(error(format!("HTTP {status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| error(format!("not JSON ({e}): {text}")))
    }

    /// vLLM's body (`prompt`, `add_special_tokens`) and llama.cpp's (`content`, `add_special`)
    /// at once: each server reads its own fields.
    async fn encode(&self, http: &reqwest::Client, text: &str) -> Result<Vec<u32>, BenchError> {
        let body = json!({
            "model": self.model, "prompt": text, "add_special_tokens": false,
            "content": text, "add_special": false,
        });
        let answer = self.post(http, "tokenize", body).await?;
        answer
            .get("tokens")
            .and_then(Value::as_array)
            .and_then(|ids| {
                ids.iter()
                    .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                    .collect::<Option<Vec<u32>>>()
            })
            .ok_or_else(|| BenchError::Tokenizer(format!("/tokenize answered {answer}")))
    }

    async fn decode(&self, http: &reqwest::Client, ids: &[u32]) -> Result<String, BenchError> {
        let body = json!({"model": self.model, "tokens": ids});
        let answer = self.post(http, "detokenize", body).await?;
        answer
            .get("prompt")
            .or_else(|| answer.get("content"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| BenchError::Tokenizer(format!("/detokenize answered {answer}")))
    }
}
