"""Talk to the quickstart gateway with the official OpenAI Python SDK.

Start the proxy first:
    cargo run --release -p switchboard-proxy -- --manifests examples/quickstart
Then:
    pip install openai
    python3 examples/quickstart/client.py

Set SWITCHBOARD_URL to reach a gateway elsewhere (default http://localhost:8080/v1).
"""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("SWITCHBOARD_URL", "http://localhost:8080/v1"),
    # A gateway key from the AIConsumer's Secret, not a provider key.
    api_key="sk-switchboard-quickstart",
)

# One whole reply.
reply = client.chat.completions.create(
    model="echo",
    messages=[{"role": "user", "content": "Hello, Switchboard!"}],
)
print("reply:", reply.choices[0].message.content)

# The same, streamed word by word.
print("stream: ", end="", flush=True)
stream = client.chat.completions.create(
    model="echo",
    messages=[{"role": "user", "content": "Streaming works too."}],
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
