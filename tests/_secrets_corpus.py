"""Fake secrets in realistic surroundings, and look-alikes that are not secrets.

Every credential here is made up: random characters in each provider's published format. None is,
or ever was, a real key. ``LEAKS`` and ``SECRET_ATTRIBUTES`` must lose every listed secret substring;
``NON_SECRET_TEXTS`` and ``NON_SECRET_ATTRIBUTES`` must come through redaction unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentemit.span import AttributeValue


@dataclass(frozen=True)
class Leak:
    """A text holding secrets; ``secrets`` are the substrings that must not survive redaction."""

    kind: str
    text: str
    secrets: tuple[str, ...]


OPENAI_KEY = "sk-5ytzwHhANLUH8nLYuJoEoxq0bUfEJ0dpayuXqVvdnmzd0h8V"
OPENAI_PROJECT_KEY = "sk-proj-Dw7yiifF-DsBZ64TUzvSPi8hFCoDe6ua88FU-xQuHCkCOUy10SPrlK5YrOqG"
ANTHROPIC_KEY = "sk-ant-api03-FLxgXXNyt7xURcdhvRJW7kQjU-Nd_dOX4D1ZJza-2kyli53Lt6vv8M0FKM9ZB3s7YLbdaYwVszLy8aPs"
AWS_KEY_ID = "AKIAKHYQVWARL9W2IJG8"
AWS_TEMP_KEY_ID = "ASIATDIDIC9U8ZHV6UV4"
AWS_SECRET = "rw0sES2RBc9jpkVTlqV5opMGtKfmhRHuwbokZXpE"
AWS_SESSION_TOKEN = "FwoGZXIvYXdzEBYaDHqa0AP1Ykx8yOxD3yLIAYxLrM2Kd7"
GH_PAT = "ghp_Y1oxPjvgu4RKIRxJiAIHBYZV3WgPAJCwKCe9"
GH_OAUTH = "gho_z4IgyVNslbh6owwVzO5xMn0nNtUqKJHFSGMv"
GH_USER = "ghu_6gUDiXg4HEb9ohHDFpifIyd6nHCSCoFC4uXM"
GH_SERVER = "ghs_tqUChcpvcsEMVK96rEbb0vrVpEXtPeH9lnNv"
GH_REFRESH = "ghr_QYlPhXO8faeF9pkBM4KLrZc4B6fzldSCIx9c"
GH_FINE_GRAINED = "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"
JWT_1 = (
    "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiODQzNTE4Mzc5IiwgIm5hbWUiOiAiSmFuZSBEb2UiLCAiaWF0IjogMTcx"
    "NjIzOTAyMn0._DzxCRhncSbLviOWGBxFGrnyzDer-bZxMh5-S8d9mnx"
)
JWT_2 = (
    "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiODEwNTE1MDc1IiwgIm5hbWUiOiAiSmFuZSBEb2UiLCAiaWF0IjogMTcx"
    "NjIzOTAyM30.byc6UGHfp-tA7TEXMKFH6pAE_kRtecmh545cp_Qo5ou"
)
JWT_3 = (
    "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiMjExMTg1MDQ0IiwgIm5hbWUiOiAiSmFuZSBEb2UiLCAiaWF0IjogMTcx"
    "NjIzOTAyNH0.IaujgTpK_DUf4kd2c9YVIpjaGMX4M0EkfBSZKyFQFp7"
)
OPAQUE_BEARER = "5plcOJq7Y29PxxvjazyH~OKJEBD.qMIevftaHKdU"
GOOGLE_OAUTH = "ya29.a0USmAYHf35Wgi8RLlWKntJU_cOCSo9TDeM9b93xBIN478bvk4hGcvHi-I97z5"
SLACK_BOT = "xoxb-724127165334-7347230690932-wNuoWp1KZtipZAns6wVU5IP4"
SLACK_USER = "xoxp-899518273701-330893607166-5676422475337-b5ef08bab1da3fd7bd099b9b36a988f3"
GOOGLE_KEY_1 = "AIzanTYECpxfHJy0h16rxAhlA5kQ9qO3B7H5Lem"
GOOGLE_KEY_2 = "AIzaN-4XG4-5_ERpjS5ObaT_-DPzeoZ46CTkubs"
PEM_LINES = (
    "Bzitrjl5O8hSrpvA/fkA6khMp6bQA7bLg77IjF6++5d43Yn+duW65ZVFIP0nBDBI",
    "R9lzXsYlKUdtBCFFuqpo3km5pwU1J0EO8aaVuuWRX1DJdvzGTbuoHxYBfz5EQupr",
    "e+iRtIHbHmVvlO6USCKln+hIBGm7GIc4eV43joSgiL1A1fOuHIaHLzenU2UHkMFC",
    "uJQjeSgcuZcLE22Gy7tcaCKxenKDVFgXoX3fy2V9cQ6JpYeTYCq5aT3PLMww7feJ",
)
SESSION_ID = "0e4d965802e863c331ffcee872115f4f"
HF_TOKEN = "hf_gfrwx3xQLiwv4SKtbTnLVycLLTvd4tNYnm"
SAS_SIGNATURE = "U2XpKq6V3hg49YuyPshUj1CJ0vuNhMdnw5gAIhhmanx"


def _pem(label: str, lines: tuple[str, ...]) -> str:
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


LEAKS: tuple[Leak, ...] = (
    # OpenAI / Anthropic style keys.
    Leak("openai", f"2024-05-01 12:00:01,337 DEBUG openai._client: using key {OPENAI_KEY} for org-acme", (OPENAI_KEY,)),
    Leak("openai", f"OPENAI_API_KEY={OPENAI_PROJECT_KEY}\nOPENAI_ORG=org-acme", (OPENAI_PROJECT_KEY,)),
    Leak(
        "openai",
        f"openai.AuthenticationError: Error code: 401 - Incorrect API key provided: {OPENAI_PROJECT_KEY}.",
        (OPENAI_PROJECT_KEY,),
    ),
    Leak("openai", f'{{"model": "gpt-4o-mini", "openai_key": "{OPENAI_KEY}", "temperature": 0.2}}', (OPENAI_KEY,)),
    Leak("anthropic", f"client = Anthropic(api_key='{ANTHROPIC_KEY}')", (ANTHROPIC_KEY,)),
    # AWS.
    Leak("aws", f"$ aws configure set aws_access_key_id {AWS_KEY_ID}", (AWS_KEY_ID,)),
    Leak(
        "aws",
        f'sts.assume_role -> {{"Credentials": {{"AccessKeyId": "{AWS_TEMP_KEY_ID}", "SecretAccessKey": '
        f'"{AWS_SECRET}", "SessionToken": "{AWS_SESSION_TOKEN}", "Expiration": "2024-05-01T13:00:00Z"}}}}',
        (AWS_TEMP_KEY_ID, AWS_SECRET, AWS_SESSION_TOKEN),
    ),
    Leak(
        "aws",
        "GET https://acme-data.s3.amazonaws.com/report.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={AWS_KEY_ID}%2F20240501%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=3600"
        "&X-Amz-Signature=4f0a7b2c9d1e3f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a",
        (AWS_KEY_ID, "4f0a7b2c9d1e3f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a"),
    ),
    Leak("aws", f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", (AWS_SECRET,)),
    # GitHub.
    Leak("github", f"git clone https://{GH_PAT}@github.com/acme/agent.git", (GH_PAT,)),
    Leak("github", f"GITHUB_TOKEN={GH_OAUTH} gh pr list", (GH_OAUTH,)),
    Leak("github", f"-H 'Authorization: token {GH_SERVER}'", (GH_SERVER,)),
    Leak("github", f"refreshed user token {GH_USER} with {GH_REFRESH}", (GH_USER, GH_REFRESH)),
    Leak("github", f"github:\n  token_value: >\n    {GH_FINE_GRAINED}\n", (GH_FINE_GRAINED,)),
    Leak("github", f"push to https://x-access-token:{GH_SERVER}@github.com/acme/agent.git failed", (GH_SERVER,)),
    # JWTs.
    Leak("jwt", f"Authorization: Bearer {JWT_1}", (JWT_1,)),
    Leak("jwt", f"Cookie: session={JWT_2}; csrftoken=Ab12Cd34Ef56Gh78", (JWT_2, "Ab12Cd34Ef56Gh78")),
    Leak("jwt", f'{{"id_token": "{JWT_3}", "expires_in": 3599}}', (JWT_3,)),
    Leak("jwt", f"decoded claims of {JWT_1} are shown below", (JWT_1,)),
    # Bearer tokens (opaque).
    Leak("bearer", f'curl -H "Authorization: Bearer {OPAQUE_BEARER}" https://api.acme.dev/v1/runs', (OPAQUE_BEARER,)),
    Leak("bearer", f"{{'authorization': 'Bearer {GOOGLE_OAUTH}', 'accept': 'application/json'}}", (GOOGLE_OAUTH,)),
    Leak("bearer", f"retrying request with bearer {OPAQUE_BEARER} (attempt 2/5)", (OPAQUE_BEARER,)),
    Leak("bearer", "Proxy-Authorization: Basic YWxpY2U6czNjcjN0LXBhc3N3b3Jk", ("YWxpY2U6czNjcjN0LXBhc3N3b3Jk",)),
    # Slack.
    Leak("slack", f"slack_sdk.WebClient(token={SLACK_BOT!r})", (SLACK_BOT,)),
    Leak("slack", f'{{"ok": false, "error": "invalid_auth", "token_used": "{SLACK_USER}"}}', (SLACK_USER,)),
    # Google API keys.
    Leak(
        "google",
        f"GET https://maps.googleapis.com/maps/api/geocode/json?address=Paris&key={GOOGLE_KEY_1} 200",
        (GOOGLE_KEY_1,),
    ),
    Leak("google", f"gemini:\n  GOOGLE_API_KEY: {GOOGLE_KEY_2}\n  model: gemini-1.5-pro", (GOOGLE_KEY_2,)),
    # PEM private keys.
    Leak("pem", "loaded key:\n" + _pem("RSA PRIVATE KEY", PEM_LINES), PEM_LINES),
    Leak("pem", _pem("OPENSSH PRIVATE KEY", PEM_LINES[:2]), PEM_LINES[:2]),
    Leak("pem", "ValueError: could not parse " + _pem("EC PRIVATE KEY", PEM_LINES[2:]) + "in load_key", PEM_LINES[2:]),
    Leak("pem", _pem("ENCRYPTED PRIVATE KEY", PEM_LINES[1:3]), PEM_LINES[1:3]),
    Leak("pem", "key = '''" + _pem("PRIVATE KEY", PEM_LINES)[:150], (PEM_LINES[0], PEM_LINES[1][:20])),  # cut short
    # Passwords in URLs, query strings, configs.
    Leak(
        "url", "sqlalchemy.create_engine('postgresql://app_user:Tr0ub4dor&3@db.internal:5432/prod')", ("Tr0ub4dor&3",)
    ),
    Leak("url", "connecting to mysql://root:correct-horse-battery@10.0.0.5/app", ("correct-horse-battery",)),
    Leak("url", "broker_url = amqp://guest:gu3st-pa55@rabbit:5672//", ("gu3st-pa55",)),
    Leak("url", "REDIS_URL=redis://:r3d1s-s3cr3t@cache:6379/0", ("r3d1s-s3cr3t",)),
    Leak("query", "POST https://idp.acme.dev/login?user=bob&password=hunter2xyz&next=/home", ("hunter2xyz",)),
    Leak(
        "query",
        "grant_type=client_credentials&client_id=acme-agent&client_secret=Q9vK2mX7pL4sN8rT",
        ("Q9vK2mX7pL4sN8rT",),
    ),
    Leak(
        "query",
        f"https://acme.blob.core.windows.net/runs/r1.json?sv=2022-11-02&sr=b&sig={SAS_SIGNATURE}&se=2024-06-01",
        (SAS_SIGNATURE,),
    ),
    Leak("config", "db:\n  host: db.internal\n  password: 'pa$$w0rd-2024'\n  pool: 5", ("pa$$w0rd-2024",)),
    Leak("config", "WARNING: connecting with passwd=S3cr3tPassW0rd (from env)", ("S3cr3tPassW0rd",)),
    Leak("config", "SECRET_KEY = 'django-insecure-8f#kq2@x!'", ("django-insecure-8f#kq2@x!",)),
    Leak("config", f"export HF_TOKEN={HF_TOKEN}", (HF_TOKEN,)),
    Leak("header", f"Set-Cookie: sessionid={SESSION_ID}; HttpOnly; Path=/; SameSite=Lax", (SESSION_ID,)),
    Leak("header", "X-Api-Key: live_9f8e7d6c5b4a39281706f5e4d3c2b1a0", ("live_9f8e7d6c5b4a39281706f5e4d3c2b1a0",)),
    Leak("log", "auth ok: session_id=8c1f0e2d3b4a5968 user=alice", ("8c1f0e2d3b4a5968",)),
)

# Key-name rule: (key, value, the secret substring that must not survive).
SECRET_ATTRIBUTES: tuple[tuple[str, AttributeValue, str], ...] = (
    ("db.password", "Tr0ub4dor&3", "Tr0ub4dor&3"),
    ("db.passwd", 271828182, "271828182"),
    ("http.request.header.authorization", (f"Bearer {OPAQUE_BEARER}",), OPAQUE_BEARER),
    ("http.request.header.x-api-key", ("live_9f8e7d6c5b4a",), "live_9f8e7d6c5b4a"),
    ("http.request.header.cookie", ("theme=dark; sid=abc123def456",), "abc123def456"),
    ("http.response.header.set-cookie", ("sid=77aa88bb99cc; HttpOnly",), "77aa88bb99cc"),
    ("X-Auth-Token", "opaque-token-value-7", "opaque-token-value-7"),
    ("oauth.clientSecret", "cs-4b5c6d7e8f", "cs-4b5c6d7e8f"),
    ("app.config.SECRET_KEY", "django-insecure-q1w2e3", "django-insecure-q1w2e3"),
    ("aws_secret_access_key", AWS_SECRET, AWS_SECRET),
    ("session_id", SESSION_ID, SESSION_ID),
    ("tls.private_key", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
    ("oauth.refresh_token", "1//0gLmn0pQrStUvWxYz", "1//0gLmn0pQrStUvWxYz"),
    ("llm.api_key", "not-shaped-like-any-known-key-1234", "not-shaped-like-any-known-key-1234"),
    ("smtp.credentials", "mailer:letmein-please", "letmein-please"),
    ("auth", "letmein-please-2", "letmein-please-2"),
    ("service.passphrase", "open sesame 42", "open sesame 42"),
)

# Look-alikes that must survive unchanged, wherever they are put.
NON_SECRET_TEXTS: tuple[str, ...] = (
    "task-123",
    "skeleton",
    "The skeleton key opened the old door.",
    "risk-assessment-v2 and desk-lamp-4 on disk-usage: 93%",
    "Use a strong password.",
    "Tokens used: 1234 (prompt_tokens: 1000, completion_tokens: 234)",
    "token budget exhausted after 4096 tokens; max_tokens=512",
    "Tokenizer: cl100k_base; token_count: 17",
    "base64 of hello world is aGVsbG8gd29ybGQ=",
    "JWT header alone: eyJhbGciOiJIUzI1NiJ9",
    "Bearer of bad news",
    "https://example.com:8443/v1/models?api-version=2024-02-01",
    "ssh://git@github.com/acme/agent.git and mailto:alice@example.com",
    "The design: simple and fast; monkey=5; keyboard: qwerty",
    "author: Jane Austen; oauth flow completed; session ended",
    "AKIA is the prefix AWS uses; sk-learn is a library; xoxo; AIza",
    "ghost_town high_score",
    "password_policy: at least 12 characters",
    "secretary: Bob",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n",
    "reward=0.75 accuracy=0.9 rollout=ro-7f3a",
    "",
    "ünïcödé ✓ 日本語 🤖",
)

NON_SECRET_ATTRIBUTES: dict[str, AttributeValue] = {
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 1234,
    "gen_ai.usage.output_tokens": 56,
    "gen_ai.request.max_tokens": 512,
    "gen_ai.server.time_to_first_token": 0.183,
    "llm.token_count.prompt": 100,
    "llm.token_count.completion": 20,
    "llm.token_count.total": 120,
    "llm.usage.per_turn_tokens": (10, 20, 30),
    "agentlightning.rollout_id": "ro-7f3a9c",
    "agentlightning.attempt_id": "at-1",
    "agentlightning.span_sequence_id": 7,
    "agentlightning.reward.0.name": "primary",
    "agentlightning.reward.0.value": 0.75,
    "agentlightning.reward.1.name": "token_efficiency",
    "agentlightning.reward.1.value": 0.5,
    "reward": 1.0,
    "task.id": "task-123",
    "session.id": "sess-42",
    "http.auth": True,
    "user.has_password": False,
    "author": "Jane Austen",
    "oauth.provider": "github",
    "tokenizer.name": "cl100k_base",
    "http.request.header.content-type": ("application/json",),
    "gen_ai.prompt.0.content": "What is the capital of France?",
    "agentlightning.object.json": (
        '{"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15},'
        '"tokenizer":"cl100k_base","auth_required":true,"has_password":false}'
    ),
    "agentlightning.event.payload": '{"max_tokens": 256, "token_count": 3, "note": "skeleton"}',
    "agentops.task.output": '{"type": "reward", "value": 1.0}',
}
