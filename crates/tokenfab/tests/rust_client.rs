//! A Rust OpenAI client (`async-openai`) against the real server, streaming and not.

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs,
};
use common::{MODEL, Server, run};
use futures_util::StreamExt;

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessage::from(text).into()
}

#[test]
fn async_openai_chat_and_stream() {
    let s = Server::start(&[]);
    run(async {
        let client = Client::with_config(
            OpenAIConfig::new()
                .with_api_base(s.url("/v1"))
                .with_api_key("unused"),
        );
        let messages = vec![
            user("What is 2 + 2?"),
            ChatCompletionRequestAssistantMessage::from("4.").into(),
            user("And 3 + 5?"),
        ];
        let req = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages(messages.clone())
            .max_completion_tokens(16u32)
            .temperature(0.0)
            .build()
            .unwrap();
        let resp = client.chat().create(req).await.unwrap();
        let answer = resp.choices[0].message.content.clone().unwrap();
        assert!(!answer.is_empty());
        let usage = resp.usage.unwrap();
        // llama.cpp's count for this conversation through the same template: 58 tokens.
        assert_eq!(usage.prompt_tokens, 58);

        let req = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages(messages)
            .max_completion_tokens(16u32)
            .temperature(0.0)
            .stream(true)
            .build()
            .unwrap();
        let mut stream = client.chat().create_stream(req).await.unwrap();
        let mut streamed = String::new();
        let mut finish = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            for c in chunk.choices {
                if let Some(t) = c.delta.content {
                    streamed.push_str(&t);
                }
                if c.finish_reason.is_some() {
                    finish = c.finish_reason;
                }
            }
        }
        assert_eq!(streamed, answer, "greedy stream and non-stream agree");
        assert!(finish.is_some());
    });
}
