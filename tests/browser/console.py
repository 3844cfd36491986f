"""The operator console in a real browser: headless Chromium (Debian's) driven
by Selenium through Debian's ChromeDriver, against a running stack.

Signs in with an owner token, creates an org (named with markup, which must
show as text), a project and a key, copies the key's secret, uses it for a
chat request through the API, finds the request in the requests view and
the overview, revokes the key and sees the API refuse it; then signs in as
a viewer, who sees no create or revoke buttons and whom the API refuses
anyway. Writes a screenshot of each page to --screenshots.

Run by tests/e2e/console.rs (scripts/test.sh); exits non-zero on the first
failed check, saying which.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

XSS = 'Acme <img src=x onerror="window.__xss=1"> & "co"'


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def wait(what, fn, timeout=15.0):
    """Polls fn until it returns something truthy; fails naming what."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the page may be redrawing
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def chat(base, key):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello from the console test"}]}).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=body, method="POST",
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


class Console:
    def __init__(self, base, shots):
        self.base = base
        self.shots = shots
        opts = webdriver.ChromeOptions()
        opts.binary_location = os.environ.get("SY_CHROMIUM", "/usr/bin/chromium")
        for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='sy-chromium-')}",
                     "--window-size=1280,900"]:
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=os.environ.get("SY_CHROMEDRIVER", "/usr/bin/chromedriver"))
        self.d = webdriver.Chrome(service=service, options=opts)
        self.d.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})

    def shot(self, name):
        os.makedirs(self.shots, exist_ok=True)
        self.d.save_screenshot(os.path.join(self.shots, f"{name}.png"))

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def all(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def visible(self, css, timeout=15.0):
        return wait(css, lambda: (lambda e: e if e.is_displayed() else None)(self.find(css)), timeout)

    def go(self, hash_):
        self.d.execute_script("location.hash = arguments[0]", hash_)

    def fetch(self, method, path, csrf=None, body=None):
        """A same-origin fetch from the page (cookie included): (status, body)."""
        return self.d.execute_async_script("""
            const [method, path, csrf, body, done] = arguments;
            const headers = {"content-type": "application/json"};
            if (csrf) headers["x-csrf-token"] = csrf;
            fetch(path, {method, headers, credentials: "same-origin",
                         body: body === null ? undefined : JSON.stringify(body)})
              .then(async r => done([r.status, await r.text()]), e => done([0, String(e)]));
        """, method, path, csrf, body)

    def sign_in(self, token):
        self.d.get(f"{self.base}/console")
        self.visible("#login")
        self.find("#token").send_keys(token)
        self.find("#sign-in").click()
        wait("the console after signing in", lambda: self.find("#top").is_displayed())

    def sign_out(self):
        self.find("#sign-out").click()
        self.visible("#login")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--owner-token", required=True)
    p.add_argument("--viewer-token", required=True)
    p.add_argument("--screenshots", required=True)
    p.add_argument("--batch-id", required=True)
    a = p.parse_args()
    base = a.base_url.rstrip("/")
    c = Console(base, a.screenshots)
    d = c.d
    try:
        # Nothing works without signing in; the page loads in under a second.
        d.get(f"{base}/console")
        c.visible("#login")
        c.shot("login")
        nav = d.execute_script("return performance.getEntriesByType('navigation')[0].duration")
        check(nav < 1000, f"the console's page loaded in {nav} ms (bar: 1 s)")
        status, _ = c.fetch("GET", "/admin/v1/orgs")
        check(status == 401, f"the admin API without a session answered {status}")
        # Keyboard: the token field has the focus, Tab reaches the button and
        # Shift+Tab from the field the skip link, the first stop of the page.
        focused = lambda: d.execute_script("return document.activeElement.id || document.activeElement.className")
        check(focused() == "token", f"the sign-in page focused {focused()!r}, not the token field")
        d.switch_to.active_element.send_keys(Keys.TAB)
        check(focused() == "sign-in", f"Tab from the token field reached {focused()!r}")
        d.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
        d.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
        check(focused() == "skip", f"Shift+Tab twice from the button reached {focused()!r}, not the skip link")
        c.find("#token").click()
        # A wrong token is refused with a message.
        c.find("#token").send_keys("not-a-token")
        c.find("#sign-in").click()
        wait("the sign-in error", lambda: "not an admin token" in c.find("#login-error").text)

        # Signed in as the owner: the cookie is HttpOnly and strict, nothing
        # is kept in the page's storage.
        c.sign_in(a.owner_token)
        cookie = d.get_cookie("sy_console")
        check(cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", f"the session cookie: {cookie}")
        check("sy_console" not in d.execute_script("return document.cookie"), "the page can read the session cookie")
        stored = d.execute_script("return localStorage.length + sessionStorage.length")
        check(stored == 0, f"{stored} items in the page's storage")
        c.visible("#overview-total")
        c.shot("overview")

        # An org named with markup shows as text; a project; a key.
        c.go("#/tenants")
        c.visible("#new-org-name").send_keys(XSS)
        c.find("#create-org").click()
        wait("the org's page", lambda: c.find("h1").text == f"Org: {XSS}")
        check(d.execute_script("return window.__xss") is None, "markup in an org's name ran")
        check(not c.all("main img"), "markup in an org's name made an element")
        c.visible("#new-project-name").send_keys("web")
        c.find("#create-project").click()
        wait("the project's page", lambda: c.find("h1").text == "Project: web")
        project_hash = "#" + d.current_url.split("#", 1)[1]
        c.visible("#new-key-name").send_keys("browser-key")
        c.find("#create-key").click()
        secret = wait("the new key's secret", lambda: c.find("#new-key-secret").text)
        c.find("#copy-secret").click()
        wait("the copy", lambda: c.find("#copy-status").text == "Copied.")
        copied = d.execute_async_script(
            "navigator.clipboard.readText().then(arguments[0], e => arguments[0]('ERR ' + e))")
        check(copied == secret, f"the clipboard holds {copied!r}")
        key_id = c.find("#keys tbody tr:not(.empty-row)").get_attribute("data-key-id")
        c.shot("project")

        # The key works through the API at once (within the key feed's second).
        status, answer = wait("the new key to work", lambda: (lambda r: r if r[0] == 200 else None)(chat(base, secret)), 10)
        check(answer["choices"][0]["message"]["content"], f"an empty answer: {answer}")

        # The key's page: default tags and a budget saved, the secret rotated
        # with a grace period (both secrets work until it ends).
        c.go(f"#/tenants/key/{key_id}")
        c.visible("#key-tags").send_keys("team=console")
        c.find("#save-key").click()
        wait("the key's tags saved", lambda: "team=console" in c.find("#key-facts").text)
        c.visible("#budget-usd").send_keys("5")
        c.find("#save-limits").click()
        wait("the budget saved", lambda: "$5 per month" in c.find("#limits-now").text)
        grace = c.find("#rotate-grace")
        grace.clear()
        grace.send_keys("600")
        c.find("#rotate").click()
        c.find("#rotate").click()
        rotated = wait("the rotated secret", lambda: c.find("#new-key-secret").text)
        check(rotated != secret, "rotation kept the secret")
        c.shot("key")
        wait("the rotated secret to work", lambda: chat(base, rotated)[0] == 200, 10)
        check(chat(base, secret)[0] == 200, "the old secret stopped inside its grace")

        # The org's page: a credit shows in the balance; this month's invoice.
        c.go(project_hash)
        wait("the project page", lambda: c.find("h1").text == "Project: web")
        c.find("main p a").click()
        wait("the org page", lambda: c.find("h1").text == f"Org: {XSS}")
        c.visible("#credit-usd").send_keys("10")
        c.find("#credit-ref").send_keys("console-test-1")
        c.find("#credit").click()
        wait("the credit in the balance", lambda: "Balance $10" in c.find("#balance").text)
        c.find("#show-invoice").click()
        wait("this month's invoice", lambda: "requests, billed" in c.find("#invoice").text)
        c.shot("org")

        # The request shows in the requests view (usage rows arrive in batches).
        c.go("#/requests")
        c.visible("#q-key_id").send_keys(key_id)

        def found():
            c.find("#search").click()
            time.sleep(0.3)
            return c.all("#requests tbody tr:not(.empty-row)")
        rows = wait("the request in the requests view", found)
        request_id = rows[0].get_attribute("data-request-id")
        c.shot("requests")
        c.go(f"#/requests/{request_id}")
        wait("the request's page", lambda: request_id in c.find("h1").text)
        attempts = c.all("#attempts tbody tr")
        check(len(attempts) == 1 and "openai/gpt-4o-mini" in attempts[0].text, "the attempt: " + " | ".join(r.text for r in attempts))
        link = c.find("#trace-link")
        check(link.get_attribute("href") == f"http://traces.example/trace/{link.text}" and len(link.text) == 32,
              f"the trace link: {link.get_attribute('href')}")
        c.shot("request")

        # And in the overview.
        def counted():
            c.go("#/tenants")
            c.go("#/overview")
            text = c.visible("#overview-total").text
            return int(text.split()[0]) >= 1 and text
        wait("the overview to count the request", counted)
        check(c.all("#targets tbody tr:not(.empty-row)"), "no target in the overview")
        c.shot("overview")

        # Revoked (two clicks: the first arms the button), the key is refused.
        c.go("#/tenants")
        wait("the org list", lambda: c.all("#orgs tbody tr:not(.empty-row)"))
        c.shot("tenants")
        c.go(project_hash)
        wait("the project page again", lambda: c.find("h1").text == "Project: web")
        button = c.find(f'button.revoke[data-key-id="{key_id}"]')
        button.click()
        check(button.text == "Confirm revoke", f"the revoke button reads {button.text!r} after one click")
        button.click()
        wait("the key shown revoked", lambda: "revoked" in c.find(f'#keys tr[data-key-id="{key_id}"]').text)
        wait("the API to refuse the revoked key", lambda: chat(base, secret)[0] == 401, 10)
        check(chat(base, rotated)[0] == 401, "the rotated secret outlived the revocation")

        # Routing: take a target out (two clicks), see explain route around
        # it, give it back; explain a request in the playground.
        c.go("#/routing")
        row = '#live-targets tr[data-target="openai/gpt-4o-mini"]'
        wait("the targets", lambda: c.find(row))
        out = c.find(f'{row} button.force[data-state="off"]')
        out.click()
        check(out.text == "Confirm: take out", f"the take-out button reads {out.text!r} after one click")
        out.click()
        wait("the target taken out", lambda: "taken out" in c.find(row).text)
        body = c.find("#explain-body")
        body.clear()
        body.send_keys(json.dumps({"model": "chain", "messages": [{"role": "user", "content": "hi"}]}))
        c.find("#explain-go").click()
        wait("explain to skip the target taken out",
             lambda: "anthropic/claude-sonnet-4-5" in c.find("#explain-result dl").text.split("Chosen")[1].split("Fallbacks")[0])
        back = c.find(f'{row} button.force[data-state="auto"]')
        back.click()
        back.click()
        wait("the target back to its health", lambda: "taken out" not in c.find(row).text)
        body = c.find("#explain-body")
        body.clear()
        body.send_keys(json.dumps({"model": "auto", "messages": [{"role": "user", "content": "Write a Python function that merges two sorted lists."}]}))
        c.find("#explain-go").click()
        wait("the playground's candidates", lambda: c.all("#explain-candidates tbody tr:not(.empty-row)"))
        check("code" in c.find("#explain-result dl").text, "explain did not show the class: " + c.find("#explain-result").text)
        c.shot("routing")

        # The batch made before the test, with its progress.
        c.go("#/batches")
        batch_row = wait("the batch", lambda: c.find(f'#batches tr[data-batch-id="{a.batch_id}"]'))
        check("of 2" in batch_row.text, f"the batch's row: {batch_row.text}")
        c.shot("batches")

        c.go("#/audit")
        wait("the audit log", lambda: "org.create" in c.find("#audit").text and "target.force" in c.find("#audit").text)
        c.shot("audit")

        # Access: an admin token made here shows its secret once and, revoked,
        # signs nobody in; a provider credential is sealed, listed by its
        # fingerprint only, and deleted.
        c.go("#/access")
        c.visible("#new-token-name").send_keys("made-here")
        c.find("#create-token").click()
        made = wait("the new admin token", lambda: c.find("#new-key-secret").text)
        check(made.startswith("sy_admin_"), f"the admin token: {made[:12]}")
        c.visible("#cred-provider").send_keys("anthropic")
        c.find("#cred-key").send_keys("sk-console-test-0123456789")
        c.find("#set-credential").click()
        wait("the credential listed", lambda: "anthropic" in c.find("#credentials").text)
        check("sk-console-test" not in c.find("main").text, "the credential's key is shown")
        c.shot("access")
        revoke = wait("the made token's revoke button",
                      lambda: [b for b in c.all("button.revoke-token")
                               if "made-here" in b.find_element(By.XPATH, "./ancestor::tr").text][0])
        revoke.click()
        revoke.click()
        wait("the made token revoked", lambda: not [b for b in c.all("button.revoke-token")
                                                     if "made-here" in b.find_element(By.XPATH, "./ancestor::tr").text])
        delete = c.find("button.delete-credential")
        delete.click()
        delete.click()
        wait("the credential deleted", lambda: "anthropic" not in c.find("#credentials").text)
        status, _ = c.fetch("POST", "/console/api/session", None, {"token": made})
        check(status == 401, f"a revoked admin token signed in: {status}")

        # A phone's screen: nothing wider than the screen but the tables' own scroll.
        d.set_window_size(390, 844)
        c.go("#/tenants")
        wait("the org list on a phone", lambda: c.all("#orgs tbody tr:not(.empty-row)"))
        wide = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        check(wide <= 1, f"the page is {wide} px wider than a phone's screen")
        c.shot("tenants-phone")
        d.set_window_size(1280, 900)

        # Signed out: the API refuses the old cookie.
        c.sign_out()
        status, _ = c.fetch("GET", "/admin/v1/orgs")
        check(status == 401, f"after signing out the admin API answered {status}")

        # A viewer sees no create or revoke button, and the API refuses anyway.
        c.sign_in(a.viewer_token)
        c.go("#/tenants")
        wait("the org list for a viewer", lambda: c.all("#orgs tbody tr:not(.empty-row)"))
        check(not c.all("#create-org"), "a viewer sees the create-org button")
        c.all("#orgs tbody a")[0].click()
        wait("an org's page for a viewer", lambda: c.find("h1").text.startswith("Org: "))
        check(not c.all("#create-project"), "a viewer sees the create-project button")
        wait("the projects", lambda: c.all("#projects tbody a"))[0].click()
        wait("a project's page for a viewer", lambda: c.find("h1").text.startswith("Project: "))
        check(not c.all("#create-key") and not c.all("button.revoke"), "a viewer sees key buttons")
        c.shot("project-viewer")
        c.go("#/routing")
        wait("the targets for a viewer", lambda: c.all("#live-targets tbody tr:not(.empty-row)"))
        check(not c.all("button.force"), "a viewer sees the force buttons")
        status, text = c.fetch("GET", "/console/api/session")
        status, text = c.fetch("PUT", "/admin/v1/targets", json.loads(text)["csrf"],
                               {"provider": "openai", "model": "gpt-4o-mini", "state": "off"})
        check(status == 403 and "permission_denied" in text, f"a viewer's force: {status} {text}")
        status, text = c.fetch("GET", "/console/api/session")
        csrf = json.loads(text)["csrf"]
        status, text = c.fetch("POST", "/admin/v1/orgs", csrf, {"name": "by a viewer"})
        check(status == 403 and "permission_denied" in text, f"a viewer's create: {status} {text}")
        status, text = c.fetch("POST", "/admin/v1/orgs", None, {"name": "no csrf"})
        check(status == 403 and "csrf_failed" in text, f"a write without CSRF: {status} {text}")
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
        check(not errors, f"the browser logged errors: {errors}")
        print("console: every check passed")
    except Exception:
        c.shot("failure")
        print("page at failure:", d.current_url, file=sys.stderr)
        print(d.execute_script("return document.getElementById('main').innerText")[:4000], file=sys.stderr)
        raise
    finally:
        d.quit()


if __name__ == "__main__":
    main()
