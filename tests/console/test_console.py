"""The web console in a real browser (headless Chromium through selenium),
against a real seaportd, with registrations made by a real seaportctl.

Every wait is on a condition with a deadline; none is a sleep."""

import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

SEAPORTD = os.environ["SEAPORTD"]
SEAPORTCTL = os.environ["SEAPORTCTL"]
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS", "console-screenshots"))
# How long a change may take to show: the "within a second".
LIVE = 1.0
# How long a start, a stop or a reconnect may take.
PATIENCE = 15.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, condition, timeout=PATIENCE, every=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Seaportd:
    """A seaportd process on fixed ports, so that it can be restarted where
    the page expects it."""

    def __init__(self, workdir, args=(), tls=None):
        self.workdir = Path(workdir)
        self.grpc = free_port()
        self.console = free_port()
        self.args = list(args)
        self.tls = tls
        self.process = None
        self.starts = 0

    def start(self):
        self.starts += 1
        self.log = self.workdir / f"seaportd-{self.starts}.log"
        command = [
            SEAPORTD,
            "--listen", f"127.0.0.1:{self.grpc}",
            "--console-listen", f"127.0.0.1:{self.console}",
            "--drain-delay", "0s",
            "--log-format", "json",
            *self.args,
        ]
        if self.tls:
            command += [
                "--tls-cert", str(self.tls / "server.pem"),
                "--tls-key", str(self.tls / "server-key.pem"),
                "--client-ca", str(self.tls / "ca.pem"),
            ]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stderr=log, env={**os.environ, "NO_COLOR": "1"})
        wait_until("seaportd's console to serve", lambda: "web console serving" in self.log.read_text()
                   or self.process.poll() is not None)
        assert self.process.poll() is None, self.log.read_text()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=PATIENCE)

    @property
    def url(self):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.console}/"


class Ctl:
    """seaportctl against one seaportd, as one identity under mTLS."""

    def __init__(self, server, identity=None):
        self.server = server
        self.env = {**os.environ, "SEAPORT_SERVER": f"127.0.0.1:{server.grpc}"}
        if server.tls:
            self.env["SEAPORT_CA"] = str(server.tls / "ca.pem")
            if identity:
                self.env["SEAPORT_CERT"] = str(server.tls / f"client-{identity}.pem")
                self.env["SEAPORT_KEY"] = str(server.tls / f"client-{identity}-key.pem")
        self.held = []

    def run(self, *args):
        done = subprocess.run([SEAPORTCTL, *args], env=self.env, capture_output=True, text=True, timeout=PATIENCE)
        assert done.returncode == 0, f"seaportctl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def register(self, role, port, id, *meta):
        """Registers an existing service and holds it; returns when the
        registration is made."""
        log = Path(self.server.workdir) / f"register-{id}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [SEAPORTCTL, "register", role, "--port", str(port), "--id", id,
                 *[f"--meta={m}" for m in meta]],
                env=self.env, stderr=out)
        self.held.append(process)
        wait_until(f"{role} to be registered", lambda: "registered" in log.read_text() or process.poll() is not None)
        assert process.poll() is None, log.read_text()
        return process

    def close(self):
        for process in self.held:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=PATIENCE)


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="seaport-console-") as d:
        yield Path(d)


@pytest.fixture
def pki(workdir):
    """A development CA, a server certificate and three identities; ops is
    an admin."""
    pki = workdir / "pki"
    subprocess.run([SEAPORTCTL, "certs", "init", str(pki), "--client", "web-1", "--client", "ops",
                    "--client", "reader"], check=True, capture_output=True)
    (workdir / "policy.toml").write_text('admins = ["ops"]\n[[allow]]\nidentities = ["web-1"]\nnames = ["*"]\n')
    return pki


def chrome(home=None):
    """Headless Chromium; with `home`, the one whose NSS database (its
    client certificates) lives there."""
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    # The test's CA is not the machine's: the page's certificate is checked
    # by the HTTP tests below, with the CA.
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--ignore-certificate-errors"]:
        options.add_argument(argument)
    env = {**os.environ, "HOME": str(home)} if home else None
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver", env=env), options=options)
    driver.set_page_load_timeout(PATIENCE)
    return driver


@pytest.fixture
def browser():
    driver = chrome()
    yield driver
    driver.quit()


def shot(driver, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait(driver, what, condition, timeout=PATIENCE):
    """Waits for `condition(driver)`, polling often so a time is measured
    to within a few tens of milliseconds."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.02,
                             ignored_exceptions=[StaleElementReferenceException]).until(condition)
    except TimeoutException as e:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from e


def status(driver):
    return driver.find_element(By.ID, "status").get_attribute("data-state")


def rows(driver, container):
    """The ids of the registrations shown in a page's container, but for
    the seaportd's own (seaport@VERSION)."""
    # One script, so that a redraw between two reads cannot leave a stale element.
    return set(driver.execute_script(
        """return [...document.querySelectorAll('#' + arguments[0] + ' tr[data-id]')]
             .filter(r => !r.closest('section[data-name="seaport"]') && !r.textContent.includes('seaport@'))
             .map(r => r.dataset.id)""", container))


def text(driver, css):
    """The shown text of the first element `css` selects, read in one
    script: the page redraws its pages as events come."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css)


def visit(driver, page):
    driver.find_element(By.CSS_SELECTOR, f'nav a[data-page="{page}"]').click()
    wait(driver, f"the {page} page", lambda d: d.find_element(By.ID, f"page-{page}").is_displayed())


def type_filter(driver, text):
    box = driver.find_element(By.ID, "pattern")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if text:
        box.send_keys(text)
    box.send_keys(Keys.ENTER)


def test_the_page_follows_the_registry_live_and_recovers_from_a_restart(workdir, pki, browser):
    server = Seaportd(workdir, ["--policy", str(workdir / "policy.toml")], tls=pki)
    server.start()
    web = Ctl(server, "web-1")
    try:
        browser.get(server.url)
        wait(browser, "the page to go live", lambda d: status(d) == "live")
        # Gone after a reload: proves that nothing below reloads the page.
        browser.execute_script("window.loadedOnce = true")

        # Registered: shown within a second, without a reload.
        holder = web.register("web@1.2.3", 10001, "web-a", "zone=a")
        registered = time.monotonic()
        wait(browser, "web-a to appear", lambda d: "web-a" in rows(d, "services"), timeout=LIVE)
        print(f"registration shown {time.monotonic() - registered:.3f}s after seaportctl returned")
        row = text(browser, '#services tr[data-id="web-a"]')
        assert "127.0.0.1:10001" in row and "zone=a" in row and "up" in row
        # A browser with no certificate reads, and only reads.
        assert not browser.find_elements(By.CSS_SELECTOR, "#services td.actions button")
        assert "Read-only" in browser.find_element(By.ID, "you").text

        # Updated: the metadata changes in place.
        web.run("update", "web-a", "--meta", "zone=b")
        wait(browser, "web-a's new metadata", lambda d: "zone=b" in (text(
            d, '#services tr[data-id="web-a"] td.metadata') or ""), timeout=LIVE)

        web.register("web@2.0.0", 10002, "web-b", "zone=c")
        web.register("api@0.3.0", 10003, "api-a")
        wait(browser, "three registrations", lambda d: rows(d, "services") == {"web-a", "web-b", "api-a"}, timeout=LIVE)
        shot(browser, "services")

        # A range: only the matching versions.
        type_filter(browser, "web@1.x")
        wait(browser, "only web 1.x", lambda d: rows(d, "services") == {"web-a"})
        versions = {b.get_attribute("data-version") for b in browser.find_elements(By.CSS_SELECTOR, "#services tbody")}
        assert versions == {"1.2.3"}
        shot(browser, "services-filtered")

        # A bad range: the server's reason, and the view stays as it was.
        type_filter(browser, "web@1.2.x.9")
        error = wait(browser, "the filter's error", lambda d: d.find_element(By.ID, "pattern-error").is_displayed()
                     and d.find_element(By.ID, "pattern-error"))
        reason = json.loads(http(server, "api/check?pattern=web%401.2.x.9", expect=400))["error"]
        assert reason and reason in error.text, (reason, error.text)
        assert browser.find_element(By.ID, "pattern").get_attribute("aria-invalid") == "true"
        assert rows(browser, "services") == {"web-a"}
        shot(browser, "services-invalid-filter")

        type_filter(browser, "")
        wait(browser, "everything again", lambda d: rows(d, "services") == {"web-a", "web-b", "api-a"})
        assert not browser.find_element(By.ID, "pattern-error").is_displayed()

        # Freed: gone within a second.
        web.run("free", "web-a")
        wait(browser, "web-a to go", lambda d: "web-a" not in rows(d, "services"), timeout=LIVE)
        # Its process would register it again after the restart below, as a
        # client does with what it holds.
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=PATIENCE)

        # The change feed: registered, updated and freed, with revisions.
        visit(browser, "changes")
        feed = wait(browser, "the feed", lambda d: [
            (r.find_element(By.CSS_SELECTOR, "td.event").text, r.find_element(By.CSS_SELECTOR, "td.id").text)
            for r in d.find_elements(By.CSS_SELECTOR, "#changes tr[data-revision]")] or None)
        for expected in [("registered", "web-a"), ("updated", "web-a"), ("freed", "web-a"), ("registered", "web-b")]:
            assert expected in feed, (expected, feed)
        revisions = [int(r.get_attribute("data-revision")) for r in browser.find_elements(By.CSS_SELECTOR, "#changes tr[data-revision]")]
        assert revisions == sorted(revisions, reverse=True) and len(set(revisions)) == len(revisions)
        shot(browser, "changes")

        # Hosts: the ports 127.0.0.1 holds.
        visit(browser, "hosts")
        wait(browser, "the host's ports", lambda d: [p.text for p in d.find_elements(
            By.CSS_SELECTOR, '#hosts [data-host="127.0.0.1"] th.port')] == [str(p) for p in sorted([10002, 10003, server.grpc])])
        shot(browser, "hosts")

        # The server: version, store, revision, health.
        visit(browser, "server")
        fact = lambda d, name: text(d, f'#server-facts dd[data-fact="{name}"]')
        wait(browser, "the server's facts", lambda d: fact(d, "Store") == "memory" and fact(d, "Health") == "SERVING")
        assert fact(browser, "Version") and int(fact(browser, "Revision")) >= max(revisions)
        shot(browser, "server")

        # Stopped: the page says so; started again: it recovers by itself,
        # and the registrations that seaportctl re-asserts come back.
        visit(browser, "services")
        server.stop()
        wait(browser, "the disconnected state", lambda d: status(d) == "disconnected")
        assert "Disconnected" in browser.find_element(By.ID, "status").text
        shot(browser, "disconnected")
        server.start()
        wait(browser, "the page to recover", lambda d: status(d) == "live")
        try:
            wait(browser, "the re-asserted registrations", lambda d: rows(d, "services") == {"web-b", "api-a"})
        except AssertionError:
            logs = {p.name: p.read_text() for p in workdir.glob("register-*.log")}
            raise AssertionError(f"shown: {rows(browser, 'services')}; seaportctl: {logs}")
        assert browser.execute_script("return window.loadedOnce") is True, "the page was reloaded"

        # Phone width: no sideways scrolling of the page itself.
        browser.set_window_size(390, 844)
        wait(browser, "the narrow layout", lambda d: d.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"))
        shot(browser, "phone")
    finally:
        web.close()
        server.stop()


def test_keyboard_reaches_every_page_and_the_filter(workdir, browser):
    server = Seaportd(workdir)
    server.start()
    ctl = Ctl(server)
    try:
        ctl.register("db@5.0.1", 10010, "db-a")
        browser.get(server.url)
        wait(browser, "db-a", lambda d: "db-a" in rows(d, "services"))
        # Tab from the top: the skip link, then the four pages' links.
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        focused = lambda: browser.switch_to.active_element
        assert focused().text == "Skip to the page"
        seen = []
        for _ in range(4):
            focused().send_keys(Keys.TAB)
            seen.append(focused().get_attribute("data-page"))
        assert seen == ["services", "hosts", "changes", "server"]
        focused().send_keys(Keys.ENTER)
        wait(browser, "the server page by keyboard", lambda d: d.find_element(By.ID, "page-server").is_displayed())
        # The filter is a labelled field; Enter applies it.
        label = browser.find_element(By.CSS_SELECTOR, 'label[for="pattern"]')
        assert label.text == "Filter"
        # Tables are tables, with column headers.
        visit(browser, "services")
        headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, '#services thead th[scope="col"]')]
        assert headers[:3] == ["VERSION", "ADDRESS", "ID"] or headers[:3] == ["Version", "Address", "ID"]
        caption = browser.find_element(By.CSS_SELECTOR, "#services table caption")
        assert caption.get_attribute("textContent") == "db: 1 version, 1 instance"

        # The namespace picker lists the namespaces that hold registrations,
        # and shows one's.
        staging = Ctl(server)
        staging.env["SEAPORT_NAMESPACE"] = "staging"
        try:
            staging.register("db@6.0.0", 10011, "db-staging")
            picker = Select(browser.find_element(By.ID, "namespace"))
            wait(browser, "the staging namespace in the picker",
                 lambda d: "staging" in [o.get_attribute("value") for o in picker.options])
            picker.select_by_value("staging")
            wait(browser, "staging's registrations", lambda d: rows(d, "services") == {"db-staging"})
            assert "namespace staging" in browser.find_element(By.ID, "services-summary").text
        finally:
            staging.close()
    finally:
        ctl.close()
        server.stop()


def http(server, path, identity=None, method="GET", headers=None, expect=200):
    """An HTTP(S) request to the console as `identity`; the body, checked
    against the expected status."""
    context = None
    if server.tls:
        context = ssl.create_default_context(cafile=str(server.tls / "ca.pem"))
        if identity:
            context.load_cert_chain(str(server.tls / f"client-{identity}.pem"),
                                    str(server.tls / f"client-{identity}-key.pem"))
    request = urllib.request.Request(server.url + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=PATIENCE) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    assert status == expect, (path, status, body)
    return body


def hello(server, identity=None):
    """The first event of a console's stream: who the server takes it for."""
    context = ssl.create_default_context(cafile=str(server.tls / "ca.pem"))
    if identity:
        context.load_cert_chain(str(server.tls / f"client-{identity}.pem"),
                                str(server.tls / f"client-{identity}-key.pem"))
    with urllib.request.urlopen(server.url + "api/events", context=context, timeout=PATIENCE) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream:
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event == "hello":
                return json.loads(line[len("data: "):])


def test_only_an_admin_frees_and_drains_and_through_the_rpcs_rules(workdir, pki):
    server = Seaportd(workdir, ["--policy", str(workdir / "policy.toml")], tls=pki)
    server.start()
    web = Ctl(server, "web-1")
    try:
        web.register("web@1.2.3", 10001, "web-a")
        web.register("web@1.2.4", 10002, "web-b")
        assert hello(server) == {"identity": "", "mtls": True, "admin": False}
        assert hello(server, "reader") == {"identity": "reader", "mtls": True, "admin": False}
        assert hello(server, "ops") == {"identity": "ops", "mtls": True, "admin": True}

        write = {"x-seaport-console": "1"}
        # Without the console's header (a form posted from another site): refused.
        assert "x-seaport-console" in http(server, "api/drain?id=web-a", "ops", "POST", expect=403)
        # Without a certificate, or as an identity that neither owns nor administers it.
        assert "read-only" in http(server, "api/drain?id=web-a", None, "POST", write, expect=403)
        assert "belongs to identity" in http(server, "api/free?id=web-a", "reader", "POST", write, expect=403)
        assert "no service with id" in http(server, "api/free?id=nope", "ops", "POST", write, expect=404)

        drained = json.loads(http(server, "api/drain?id=web-a", "ops", "POST", write))["service"]
        assert drained["id"] == "web-a" and drained["draining"] is True
        assert "draining" in web.run("query", "web")
        json.loads(http(server, "api/free?id=web-b", "ops", "POST", write))
        listed = web.run("-o", "json", "query", "web")
        assert [s["id"] for s in json.loads(listed)] == ["web-a"]
    finally:
        web.close()
        server.stop()


def test_reads_that_need_a_certificate_need_one_on_the_console_too(workdir, pki):
    admin = free_port()
    server = Seaportd(workdir, ["--require-client-cert-for-reads", "--admin-listen", f"127.0.0.1:{admin}"], tls=pki)
    server.start()
    try:
        refused = http(server, "", None, expect=401)
        assert "client certificate" in refused
        http(server, "api/check?pattern=web", None, expect=401)
        assert "<title>Seaport console" in http(server, "", "reader")
        # The plaintext admin port serves probes and metrics, never the console.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/", timeout=PATIENCE)
        assert e.value.code == 404
    finally:
        server.stop()


@pytest.fixture
def admin_browser(workdir, pki):
    """A browser holding ops's certificate, which Chromium presents to the
    console without asking, by a managed policy (the only way Chromium
    takes a client certificate unattended), removed afterwards."""
    home = workdir / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    p12 = workdir / "ops.p12"
    subprocess.run(["openssl", "pkcs12", "-export", "-in", str(pki / "client-ops.pem"),
                    "-inkey", str(pki / "client-ops-key.pem"), "-out", str(p12), "-passout", "pass:",
                    "-name", "ops"], check=True, capture_output=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["pk12util", "-i", str(p12), "-d", f"sql:{nssdb}", "-W", ""], check=True, capture_output=True)
    server = Seaportd(workdir, ["--policy", str(workdir / "policy.toml")], tls=pki)
    policies = Path("/etc/chromium/policies/managed")
    policies.mkdir(parents=True, exist_ok=True)
    policy = policies / f"seaport-console-test-{server.console}.json"
    rule = json.dumps({"pattern": f"https://127.0.0.1:{server.console}", "filter": {}})
    policy.write_text(json.dumps({"AutoSelectCertificateForUrls": [rule]}))
    driver = None
    try:
        driver = chrome(home)
        yield server, driver
    finally:
        policy.unlink()
        if driver:
            driver.quit()


def test_an_admin_drains_and_frees_from_the_page_after_confirming(admin_browser):
    server, browser = admin_browser
    server.start()
    web = Ctl(server, "web-1")
    try:
        web.register("web@1.2.3", 10001, "web-a", "zone=a")
        web.register("web@1.2.4", 10002, "web-b", "zone=b")
        browser.get(server.url)
        wait(browser, "the admin's buttons", lambda d: all(
            len(d.find_elements(By.CSS_SELECTOR, f'#services tr[data-id="{id}"] td.actions button')) == 2
            for id in ["web-a", "web-b"]))
        assert "Signed in as ops, an admin" in browser.find_element(By.ID, "you").text

        def button(id, label):
            return browser.find_element(By.CSS_SELECTOR, f'#services tr[data-id="{id}"] button[aria-label^="{label} "]')

        # Drain asks first; confirmed, the row says draining.
        button("web-a", "Drain").click()
        question = wait(browser, "the confirmation", lambda d: d.switch_to.alert)
        assert "Drain web@1.2.3 at 127.0.0.1:10001" in question.text
        question.accept()
        wait(browser, "web-a draining", lambda d: d.find_element(
            By.CSS_SELECTOR, '#services tr[data-id="web-a"] td.state').text == "draining", timeout=LIVE)
        assert "draining" in web.run("query", "web@1.2.3")

        # Free, cancelled: nothing changes; confirmed: the row goes.
        button("web-b", "Free").click()
        wait(browser, "the confirmation", lambda d: d.switch_to.alert).dismiss()
        assert "web-b" in rows(browser, "services")
        assert "web-b" in web.run("query", "web"), "not freed when cancelled"
        button("web-b", "Free").click()
        question = wait(browser, "the confirmation", lambda d: d.switch_to.alert)
        assert "Free web@1.2.4 at 127.0.0.1:10002" in question.text
        question.accept()
        wait(browser, "web-b to go", lambda d: "web-b" not in rows(d, "services"), timeout=LIVE)
        assert "Freed web@1.2.4" in browser.find_element(By.ID, "notice").text
        shot(browser, "services-admin")
        listed = json.loads(web.run("-o", "json", "query", "web"))
        assert [(s["id"], s["draining"]) for s in listed] == [("web-a", True)]
    finally:
        web.close()
        server.stop()
