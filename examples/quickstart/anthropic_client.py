"""Talk to the quickstart gateway with the official Anthropic Python SDK.

Switchboard serves Anthropic's Messages API at /v1/messages for every provider, so
Anthropic SDK users can reach OpenAI, Gemini, or here the built-in echo model.

Start the proxy first:
    cargo run --release -p switchboard-proxy -- --manifests examples/quickstart
Then:
    pip install anthropic
    python3 examples/quickstart/anthropic_client.py

Set SWITCHBOARD_URL to reach a gateway elsewhere (default http://localhost:8080).
"""

import os

from anthropic import Anthropic

client = Anthropic(
    base_url=os.environ.get("SWITCHBOARD_URL", "http://localhost:8080"),
    # A gateway key from the AIConsumer's Secret, not a provider key.
    api_key="sk-switchboard-quickstart",
)

# One whole reply.
message = client.messages.create(
    model="echo",
    max_tokens=64,
    system="You are an echo.",
    messages=[{"role": "user", "content": "Hello from the Anthropic SDK!"}],
)
print("reply:", message.content[0].text, f"({message.stop_reason})")

# The same, streamed: the SDK assembles the events into a final message.
print("stream: ", end="", flush=True)
with client.messages.stream(
    model="echo",
    max_tokens=3,
    messages=[{"role": "user", "content": "Streaming cuts at max tokens"}],
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
    final = stream.get_final_message()
print(f" ({final.stop_reason}, {final.usage.output_tokens} output tokens)")
