"""Who may call the server: the Host it is asked for (DNS rebinding), where a browser sent a POST
from (cross-site forgery), the token; a server other machines can reach needs a token."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serving import LOCAL, image_bytes

from detlab.cli import build_parser
from detlab.serve.access import Access, check_exposure, same_origin
from detlab.serve.app import create_app
from detlab.serve.limits import Limits, parse_bytes

TOKEN = "s3cret-token_1"


@pytest.fixture(scope="module")
def open_app(untrained):
    return create_app({"yolov1": untrained["yolov1"]}, access=Access(allow_hosts=("detlab.lan",)))


@pytest.fixture(scope="module")
def token_app(untrained):
    return create_app({"yolov1": untrained["yolov1"]}, access=Access(token=TOKEN))


def detect(client, **headers):
    return client.post(
        "/api/detect", files={"image": ("a.png", image_bytes(32, 32), "image/png")}, headers=headers
    )


def assert_secured(response, status: int, words: str = "") -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert not [name for name in response.headers if name.startswith("access-control-")]  # no CORS, ever
    if status >= 400:
        assert words.lower() in response.json()["error"].lower()


@pytest.mark.parametrize(
    "host, status",
    [("127.0.0.1:8000", 200), ("localhost:8000", 200), ("[::1]:8000", 200), ("192.168.1.20:8000", 200),
     ("detlab.lan", 200), ("DETLAB.LAN.:80", 200), ("evil.example", 400), ("evil.example:8000", 400),
     ("localhost.evil.example", 400), ("", 400)],
)  # fmt: skip
def test_only_hosts_that_name_this_server_are_answered(open_app, host, status):
    """DNS rebinding: a page of evil.example pointed at 127.0.0.1 sends ``Host: evil.example``."""
    with TestClient(open_app, base_url=LOCAL) as client:
        response = client.get("/api/models", headers={"host": host})
        assert_secured(response, status, "does not answer to the host")
        if status == 200:
            assert response.json()["models"][0]["name"] == "yolov1"


def test_posts_from_other_web_sites_are_refused(open_app):
    with TestClient(open_app, base_url=LOCAL) as client:
        assert_secured(detect(client), 200)  # no Origin: not a browser
        assert_secured(detect(client, origin="http://127.0.0.1"), 200)
        assert_secured(detect(client, origin="http://127.0.0.1:80", **{"sec-fetch-site": "same-origin"}), 200)
        for origin in ("https://evil.example", "http://127.0.0.1:3000", "null", "http://localhost"):
            assert_secured(detect(client, origin=origin), 403, "other web sites")
        for site in ("cross-site", "same-site"):
            assert_secured(detect(client, **{"sec-fetch-site": site}), 403, "other web sites")
        # A page may still read what is open to it: GETs of its own origin.
        assert client.get("/api/models", headers={"sec-fetch-site": "same-origin"}).status_code == 200


def test_same_origin_compares_host_and_port():
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("http://[::1]:8000", "[::1]:8000") and same_origin("http://a.lan", "a.lan:80")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("null", "127.0.0.1:8000") and not same_origin("file://", "127.0.0.1")


def test_with_a_token_every_api_request_carries_it(token_app):
    with TestClient(token_app, base_url=LOCAL) as client:
        assert_secured(client.get("/api/models"), 401, "token")
        assert client.get("/api/models").headers["www-authenticate"] == "Bearer"
        assert_secured(client.get("/api/models", headers={"authorization": "Bearer wrong"}), 401, "token")
        assert_secured(client.get("/api/models", headers={"authorization": f"Basic {TOKEN}"}), 401, "token")
        assert_secured(detect(client), 401, "token")
        assert_secured(client.get("/api/models", headers={"authorization": f"Bearer {TOKEN}"}), 200)
        assert_secured(detect(client, authorization=f"Bearer {TOKEN}"), 200)
        # The page and its files load without it (the page then asks for it), and so does /healthz.
        for path in ("/", "/static/app.js", "/healthz"):
            assert_secured(client.get(path), 200)


def test_the_models_list_shows_no_absolute_path(trained_run):
    with TestClient(create_app([trained_run / "best"], device="cpu"), base_url=LOCAL) as client:
        listed = client.get("/api/models").json()
    assert listed["models"][0]["checkpoint"] == "shapes/best.pt"
    assert str(trained_run) not in str(listed) and "/tmp" not in str(listed)


def test_a_server_other_machines_can_reach_needs_a_token():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, None, insecure=False)
    for host in ("0.0.0.0", "192.168.1.20", "::", "myhost.lan"):
        with pytest.raises(ValueError, match="needs a token"):
            check_exposure(host, None, insecure=False)
        check_exposure(host, TOKEN, insecure=False)
        check_exposure(host, None, insecure=True)
    with pytest.raises(ValueError, match="printable"):
        Access(token="two words")


def test_the_command_line_takes_the_access_and_memory_options():
    args = build_parser().parse_args(
        [
            "serve",
            "--checkpoint",
            "runs/a/best",
            "--host",
            "0.0.0.0",
            "--token",
            TOKEN,
            "--allow-host",
            "a.lan",
            "--allow-host",
            "b.lan",
            "--memory-budget",
            "1.5G",
            "--max-uploads",
            "8",
        ]
    )
    assert (args.token, args.allow_host, args.insecure) == (TOKEN, ["a.lan", "b.lan"], False)
    assert (args.memory_budget, args.max_uploads) == (int(1.5 * 1024**3), 8)
    assert build_parser().parse_args(["serve", "--checkpoint", "x"]).memory_budget is None
    assert (
        parse_bytes("512M") == 512 * 1024**2
        and parse_bytes("4GiB") == 4 * 1024**3
        and parse_bytes("100") == 100
    )
    with pytest.raises(ValueError, match="amount of memory"):
        parse_bytes("lots")
    with pytest.raises(ValueError, match="memory_budget"):
        Limits(memory_budget=0)


def test_detlab_serve_refuses_to_expose_itself_without_a_token(tmp_path, monkeypatch, capsys):
    """Before any model is loaded (the checkpoint does not even exist)."""
    from detlab.cli import main

    monkeypatch.delenv("DETLAB_SERVE_TOKEN", raising=False)
    assert main(["serve", "--checkpoint", str(tmp_path / "none"), "--host", "0.0.0.0"]) == 2
    assert "needs a token" in capsys.readouterr().err
