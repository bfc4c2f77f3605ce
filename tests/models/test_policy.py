"""URL and file-name rules for model downloads: every rule refuses with a message that says what is allowed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.config import Settings
from worker.errors import UrlNotAllowed
from worker.models import policy
from worker.schema import parse_job_input

PUBLIC = {"huggingface.co": ["18.244.202.60"], "cdn-lfs.huggingface.co": ["18.244.202.61"]}


def resolver(host: str, port: int) -> list[str]:
    return PUBLIC.get(host, ["10.0.0.7"])


STRICT = Settings()


def refused(url: str, settings: Settings = STRICT) -> str:
    with pytest.raises(UrlNotAllowed) as info:
        policy.check_model_url(url, field="high_model_url", settings=settings, resolver=resolver)
    return str(info.value)


def test_https_to_an_allowed_public_host_passes() -> None:
    for url in (
        "https://huggingface.co/Comfy-Org/x/resolve/main/a.safetensors",
        "https://cdn-lfs.huggingface.co/repos/ab/cd/sha?X-Amz-Signature=abc",
    ):
        policy.check_model_url(url, field="high_model_url", settings=STRICT, resolver=resolver)


def test_plain_http_is_refused_unless_allowed() -> None:
    message = refused("http://huggingface.co/a.safetensors")
    assert "high_model_url" in message and "https" in message and "ALLOW_HTTP_MODEL_URLS" in message
    allowed = STRICT.model_copy(update={"allow_http_model_urls": True})
    policy.check_model_url(
        "http://huggingface.co/a.safetensors", field="f", settings=allowed, resolver=resolver
    )


@pytest.mark.parametrize(
    "url", ["ftp://huggingface.co/a.safetensors", "file:///etc/passwd", "huggingface.co/a"]
)
def test_other_schemes_are_refused(url: str) -> None:
    assert "https" in refused(url)


@pytest.mark.parametrize(
    "url", ["https://evil.example/a.safetensors", "https://huggingface.co.evil.example/a.safetensors"]
)
def test_hosts_off_the_allow_list_are_refused(url: str) -> None:
    message = refused(url)
    assert "not allowed for model downloads" in message
    assert "huggingface.co" in message and "ALLOWED_MODEL_HOSTS" in message


def test_subdomains_of_allowed_hosts_pass_and_wildcards_are_understood() -> None:
    def allowed(host: str, settings: Settings = STRICT) -> bool:
        try:
            policy.check_host(f"https://{host}/a", field="f", settings=settings)
        except UrlNotAllowed:
            return False
        return True

    assert allowed("cas-bridge.xethub.hf.co") and allowed("us.civitai.com")
    assert allowed("a.example.org", Settings(allowed_model_hosts=("*.example.org",)))
    assert not allowed("example.org.attacker.net", Settings(allowed_model_hosts=("example.org",)))
    assert not allowed("notcivitai.com")


def test_an_allowed_host_resolving_to_a_private_address_is_refused() -> None:
    settings = STRICT.model_copy(update={"allowed_model_hosts": ("internal.example",)})
    assert "non-public address" in refused("https://internal.example/a.safetensors", settings)


def test_loopback_is_refused_without_allow_private_urls() -> None:
    settings = STRICT.model_copy(
        update={"allowed_model_hosts": ("127.0.0.1",), "allow_http_model_urls": True}
    )
    assert "non-public address" in refused("http://127.0.0.1:8080/a.safetensors", settings)


def test_query_strings_never_appear_in_messages() -> None:
    message = refused("https://evil.example/a.safetensors?token=SECRET123")
    assert "SECRET123" not in message


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../evil.safetensors", "without folders or path separators"),
        ("sub/evil.safetensors", "without folders"),
        ("sub\\evil.safetensors", "without folders"),
        (".hidden.safetensors", "must not start with '.'"),
        ("", "must not be empty"),
        ("x" * 200 + ".safetensors", "at most 200 bytes"),
        ("model.ckpt", "ALLOW_PICKLE_MODELS"),
        ("model.txt", "must end in .safetensors or .sft"),
    ],
)
def test_unsafe_names_are_refused(name: str, words: str) -> None:
    with pytest.raises(UrlNotAllowed) as info:
        policy.check_name(name, field="lora_pairs[0].high_url", settings=STRICT)
    assert words in str(info.value)
    assert "lora_pairs[0].high_url" in str(info.value)


def test_the_policy_and_the_job_contract_share_one_name_rule() -> None:
    names = [
        "a..b.safetensors",
        "with space (v2).safetensors",
        "naïve.sft",
        ".x.safetensors",
        "m.ckpt",
        "a/b",
    ]
    for name in names:
        try:
            policy.check_name(name, field="vae_url", settings=STRICT)
            policy_ok = True
        except UrlNotAllowed:
            policy_ok = False
        try:
            parse_job_input({"prompt": "p", "image_base64": "eA==", "vae": name})
            schema_ok = True
        except ValidationError:
            schema_ok = False
        assert policy_ok == schema_ok, name


def test_pickle_formats_only_when_allowed() -> None:
    allowed = STRICT.model_copy(update={"allow_pickle_models": True})
    for name in ("model.ckpt", "model.pt", "model.pth", "model.bin", "model.pkl", "ok-v1.2+fp8.safetensors"):
        assert policy.check_name(name, field="f", settings=allowed) == name


def test_size_cap() -> None:
    settings = STRICT.model_copy(update={"max_model_gb": 1.0})
    policy.check_size(10**9, field="vae_url", url="https://h/x", settings=settings)
    with pytest.raises(UrlNotAllowed, match="MAX_MODEL_GB"):
        policy.check_size(10**9 + 1, field="vae_url", url="https://h/x", settings=settings)


def test_tokens_go_only_to_their_own_hosts_over_https() -> None:
    settings = STRICT.model_copy(update={"hf_token": "hf_SECRET", "civitai_token": "cv_SECRET"})
    assert policy.auth_headers("https://huggingface.co/a", settings) == {"Authorization": "Bearer hf_SECRET"}
    assert policy.auth_headers("https://hf.co/a", settings) == {"Authorization": "Bearer hf_SECRET"}
    assert policy.auth_headers("https://civitai.com/api/download/models/1", settings) == {
        "Authorization": "Bearer cv_SECRET"
    }
    for url in (
        "http://huggingface.co/a",
        "https://cdn-lfs.huggingface.co/a",
        "https://cas-bridge.xethub.hf.co/a",
        "https://b2.civitai.com/a",
        "https://huggingface.co.evil.example/a",
        "https://127.0.0.1/a",
    ):
        assert policy.auth_headers(url, settings) == {}, url


def test_name_from_content_disposition_wins() -> None:
    name = policy.derive_name(
        field="lora_pairs[0].high_url",
        url="https://civitai.com/api/download/models/12345?type=Model",
        final_url="https://b2.civitai.com/file/abc?sig=1",
        disposition="attachment; filename*=UTF-8''My%20Lora%20v2.safetensors; filename=\"x\"",
        settings=STRICT,
    )
    assert name == "My Lora v2.safetensors"


def test_hostile_content_disposition_is_made_safe() -> None:
    name = policy.derive_name(
        field="f",
        url="https://civitai.com/api/download/models/1",
        final_url="https://civitai.com/api/download/models/1",
        disposition='attachment; filename="../../etc/..cron.safetensors"',
        settings=STRICT,
    )
    assert name == "cron.safetensors"


def test_a_name_without_an_extension_is_kept_as_it_is() -> None:
    from worker.models.names import sanitize

    assert sanitize("model.with-a-long-tail-not-an-extension") == "model.with-a-long-tail-not-an-extension"
    assert sanitize(" ..noext ") == "noext"
    assert len(sanitize("x" * 300).encode()) == 200


def test_name_from_the_url_path() -> None:
    name = policy.derive_name(
        field="f",
        url="https://huggingface.co/org/repo/resolve/main/sub/my%2Bmodel.safetensors?download=true",
        final_url="https://cdn-lfs.huggingface.co/repos/aa/bb/0123abcd",
        disposition=None,
        settings=STRICT,
    )
    assert name == "my+model.safetensors"


def test_a_name_that_cannot_be_known_is_refused() -> None:
    with pytest.raises(UrlNotAllowed, match=r"must end in \.safetensors"):
        policy.derive_name(
            field="f",
            url="https://civitai.com/api/download/models/12345",
            final_url="https://civitai.com/api/download/models/12345",
            disposition=None,
            settings=STRICT,
        )
    with pytest.raises(UrlNotAllowed, match="cannot tell the file name"):
        policy.derive_name(
            field="f",
            url="https://h.example/",
            final_url="https://h.example/",
            disposition=None,
            settings=STRICT,
        )
