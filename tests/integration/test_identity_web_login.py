"""On a running local stack (the issuer is its own process): ``fleet stack add-user`` and
``fleet stack add-web-client`` configure it through the management API, twice without
harm, and the human then logs in to the web client (code flow + PKCE)."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import requests

from harmony_fleet.cli import main
from harmony_fleet.contracts.identity import ROLES_CLAIM, ROLES_SCOPE
from harmony_fleet.localstack.files import write_private_file
from harmony_fleet.localstack.issuer_admin import IssuerAdmin, ManagementCallError
from harmony_fleet.localstack.issuer_login import LOGIN_PATH, s256
from harmony_fleet_harness.pytest_plugin import SharedServer, unique_device_id

REDIRECT = "http://127.0.0.1:9/auth/callback"


def _login(issuer_url: str, client_id: str, user: str, password: str) -> dict[str, str]:
    verifier = secrets.token_urlsafe(48)
    http = requests.Session()
    form = http.get(f"{issuer_url}/oauth/v2/authorize", timeout=10, params={
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
        "scope": f"openid {ROLES_SCOPE}", "state": "st", "nonce": "nn",
        "code_challenge": s256(verifier), "code_challenge_method": "S256"})
    request_id = re.search(r'name="authRequestID" value="([^"]+)"', form.text)
    assert request_id is not None, form.text
    answer = http.post(f"{issuer_url}{LOGIN_PATH}", allow_redirects=False, timeout=10,
                       data={"authRequestID": request_id.group(1), "username": user,
                             "password": password})
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    token = requests.post(f"{issuer_url}/oauth/v2/token", timeout=10, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "client_id": client_id, "code_verifier": verifier})
    assert token.status_code == 200, token.text
    return dict(token.json())


async def test_cli_configures_a_web_login(fleet_callout_server: SharedServer, tmp_path: Path,
                                          capsys: object) -> None:
    stack = fleet_callout_server.stack()
    state_file = write_private_file(tmp_path / "state.json", json.dumps(stack.state()))
    password_file = write_private_file(tmp_path / "pw", "a long enough password\n")
    user = unique_device_id("issuer-zitadel-alice")
    client_name = unique_device_id("issuer-zitadel-dashboard")

    def configure() -> tuple[int, int, int, int]:
        add_user = ["stack", "add-user", user, "--role", "fleet-admin", "--password-file",
                    str(password_file), "--state-file", str(state_file)]
        add_client = ["stack", "add-web-client", client_name, "--redirect-uri", REDIRECT,
                      "--json", "--state-file", str(state_file)]
        return main(add_user), main(add_client), main(add_user), main(add_client)

    assert await asyncio.to_thread(configure) == (0, 0, 0, 0)
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    clients = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len({c["client_id"] for c in clients}) == 1  # the second run found the first
    assert len({line for line in out.splitlines() if line.startswith("user ")}) == 1

    admin = IssuerAdmin.from_state(stack.state())
    token = await asyncio.to_thread(_login, admin.issuer_url, clients[0]["client_id"], user,
                                    "a long enough password")
    claims = jwt.decode(token["id_token"], options={"verify_signature": False})
    assert claims["nonce"] == "nn"
    assert "fleet-admin" in claims[ROLES_CLAIM]

    # the stack's admin API refuses what Zitadel refuses
    def duplicate() -> ManagementCallError:
        try:
            admin.call("POST", "/users/machine", {"userName": user})
        except ManagementCallError as exc:
            return exc
        raise AssertionError("a duplicate user name was accepted")

    refused = await asyncio.to_thread(duplicate)
    assert (refused.status, refused.code) == (409, 6)

    # the stack's admin PAT (a bearer for Ansible's uri) reaches the same API
    pat = Path(stack.state()["issuer"]["admin_pat_file"]).read_text()
    by_pat = IssuerAdmin(admin.issuer_url, None, admin.project_id, pat=pat)
    found = await asyncio.to_thread(by_pat.find_user, user)
    assert found is not None
    assert found["human"]["profile"]["firstName"] == user
