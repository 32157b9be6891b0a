"""certbot's failure output, turned into one sentence a user can act on.

Postal users saw "Status was not valid (was: invalid)" and nothing else. The
CA says much more (which URL it fetched, what it got back), and certbot prints
it in blocks like::

    Identifier: click.example.com
    Type:   unauthorized
    Detail: ... http://click.example.com/.well-known/acme-challenge/<token> returned 404

These functions find that, name the likely cause and the fix, and fall back to
certbot's own last words (plus where its log is) for anything unforeseen.
"""

from __future__ import annotations

import re

_PROBLEM_RE = re.compile(
    r"Identifier:\s*(?P<identifier>\S+)\s*\n\s*Type:\s*(?P<type>\S+)\s*\n\s*Detail:\s*(?P<detail>.+)"
)
_URL_RE = re.compile(r"(https?://[^\s\"'<>]+?/\.well-known/acme-challenge/)[A-Za-z0-9_-]+")
_STATUS_RE = re.compile(r"(?:returned|status code|got|response from \S+?:)\s*(\d{3})\b")
_HOOK_RE = re.compile(
    r"Hook '--manual-(\S+)' for (\S+) ran with error output:\s*\n(?P<out>(?:.*\n?)+)"
)
_NOISE = (
    "Saving debug log to",
    "Ask for help or search for solutions",
    "See the logfile",
    "Some challenges have failed",
    "Hint:",
    "An unexpected error occurred:",
)


def _challenge_url(detail: str, domain: str) -> str:
    match = _URL_RE.search(detail)
    if match:
        return match.group(1) + "..."
    return f"http://{domain}/.well-known/acme-challenge/..."


def explain_problem(domain: str, typ: str, detail: str) -> str:
    """One CA-reported problem (``Type``/``Detail``) in words, with what to check."""
    typ = typ.rsplit(":", 1)[-1]
    low = detail.lower()
    url = _challenge_url(detail, domain)
    if "did not match" in low or "key authorization" in low:
        return (
            f"the HTTP-01 request for {url} got an answer, but not this challenge's: "
            f"is the CNAME pointing at this server, and is every server behind it using this store?"
        )
    if typ == "dns" or "nxdomain" in low or "no such host" in low or "dns problem" in low:
        return (
            f"the CA could not look up {domain} ({detail.strip()}): add the CNAME record and "
            f"run `postal-tracking track-domains check-dns {domain}`"
        )
    if "connection refused" in low:
        return (
            f"the HTTP-01 request for {url} could not connect (connection refused): is the fast "
            f"server running, listening on the HTTP port of the address {domain} points at?"
        )
    if "timeout" in low or "timed out" in low:
        return (
            f"the HTTP-01 request for {url} timed out: is a firewall blocking the HTTP port of "
            f"the address {domain} points at?"
        )
    if typ == "rateLimited" or "rate limit" in low or "too many" in low:
        return f"the CA's rate limit stopped the request for {domain}: {detail.strip()}"
    if typ in ("rejectedIdentifier", "malformed") or "policy forbids" in low:
        return f"the CA will not issue a certificate for {domain}: {detail.strip()}"
    if typ in ("unauthorized", "connection", "incorrectResponse"):
        status = _STATUS_RE.search(detail)
        if status:
            code = status.group(1)
            hint = (
                "is the CNAME pointing at this server?"
                if code == "404"
                else "is the fast server the one answering on the HTTP port there?"
            )
            return f"the HTTP-01 request for {url} got {code}: {hint}"
    return f"the CA refused {domain} ({typ}): {detail.strip()}"


def explain_issue_failure(output: str, domain: str, server: str, logs: str = "") -> str:
    """Why ``certbot certonly`` failed for ``domain``, in one line."""
    problems = [m for m in _PROBLEM_RE.finditer(output)]
    for match in problems:
        if match.group("identifier").lower() == domain.lower():
            return explain_problem(domain, match.group("type"), match.group("detail"))
    if problems:
        m = problems[0]
        return explain_problem(m.group("identifier"), m.group("type"), m.group("detail"))
    hook = _HOOK_RE.search(output)
    if hook:
        lines = [ln.strip() for ln in hook.group("out").splitlines() if ln.strip()]
        said = next((ln for ln in lines if not ln.startswith(_NOISE)), "no output")
        return f"the {hook.group(1)} hook for {domain} failed: {said}"
    return certbot_failure(output, server=server, what=f"the certificate for {domain}", logs=logs)


def certbot_failure(output: str, *, server: str, what: str, logs: str = "") -> str:
    """Failures that are not about one challenge: the account, the network, certbot itself."""
    low = output.lower()
    if "invalid email" in low or "invalidcontact" in low:
        named = re.search(r"believes (\S+) is an invalid email address", output)
        if named:
            return (
                f"the ACME server refused the e-mail address {named.group(1)} as invalid: give "
                f"one it accepts (Let's Encrypt also checks that its domain exists)"
            )
        return f"the ACME server refused the e-mail address: {_last_words(output)}"
    if "account" in low and (
        "accountdoesnotexist" in low
        or "unable to find existing account" in low
        or re.search(r"account \S+ not found", low)
    ):
        return (
            f"the ACME server {server} no longer knows the account registered here (was it "
            f"reset?): run `postal-tracking register-lets-encrypt EMAIL` again, which replaces it"
        )
    if "certificate_verify_failed" in low or "sslerror" in low:
        return (
            f"the ACME server {server} has a TLS certificate this machine does not trust: for a "
            f"private ACME CA set tracking.acme.ca_bundle"
        )
    if "connectionerror" in low or "failed to establish a new connection" in low:
        return (
            f"cannot reach the ACME server {server}: check tracking.acme.directory and this "
            f"machine's network"
        )
    if "another instance of certbot is already running" in low:
        return (
            "another certbot is using this installation's letsencrypt folder: try again when it "
            "has finished"
        )
    if "did not finish within" in low:
        return f"{what}: {_last_words(output)}"
    where = f" (certbot's log: {logs})" if logs else ""
    return f"{what} failed: {_last_words(output)}{where}"


def _last_words(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(_NOISE)]
    if not useful:
        return "certbot gave no reason"
    return useful[-1][:500]
