#!/usr/bin/env python3
"""Runs the generated workloads with piper and its peers (hyperfine for whole
processes), measures peak memory, and writes the results as a Markdown table
with piper/peer ratios. Called by bench/run."""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile

PEERS = ["make", "ninja", "just"]


def hyperfine(cwd, commands, runs, warmup=2, prepare=None, rounds=1):
    """Median seconds per command name (None where the command failed).

    With rounds > 1 the runs are split into that many hyperfine calls and
    the order of the commands rotates between them: a millisecond workload
    drifts with the machine (caches, the hypervisor's neighbours) over the
    seconds one block of runs takes, and whichever tool ran in the slow
    stretch looked slower. The median is taken over all runs of a tool."""
    times = {name: [] for name, _ in commands}
    failed = set()
    per_round = max(1, runs // rounds)
    for r in range(rounds):
        order = commands[r % len(commands):] + commands[:r % len(commands)]
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = ["hyperfine", "-N", "--style", "none", "--warmup", str(warmup), "--runs", str(per_round),
                   "--export-json", out.name, "-i"]
            if prepare:
                cmd += ["--prepare", prepare]
            for name, command in order:
                cmd += ["-n", name, command]
            subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
            for result in json.load(open(out.name))["results"]:
                if any(code != 0 for code in result.get("exit_codes", [])):
                    failed.add(result["command"])
                times[result["command"]] += result["times"]
    return {name: None if name in failed or not ts else statistics.median(ts)
            for name, ts in times.items()}


def peak_rss_mb(cwd, argv):
    """Peak resident memory of `argv`, in MB, measured by GNU time: a child
    forked from this Python process would start its peak at Python's own
    ~15 MB (Linux carries the forking process's high-water mark across
    exec), and every small tool would look the same size."""
    with tempfile.NamedTemporaryFile(mode="r", suffix=".txt") as out:
        subprocess.run(["/usr/bin/time", "-o", out.name, "-f", "%M"] + argv, cwd=cwd, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return int(out.read().strip().splitlines()[-1]) / 1024.0


def start_nginx(work):
    """A private nginx serving Bazel's HTTP cache protocol (WebDAV PUT) on
    a free port: its process and base URL, or (None, None) without nginx."""
    import socket
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not nginx:
        return None, None
    store = os.path.join(work, "nginx")
    os.makedirs(os.path.join(store, "store", ".tmp"))
    with socket.socket() as s_:
        s_.bind(("127.0.0.1", 0))
        port = s_.getsockname()[1]
    conf = (f"user root; daemon off; pid {store}/nginx.pid; error_log {store}/error.log;\n"
            f"events {{}}\nhttp {{ access_log off; client_body_temp_path {store}/store/.tmp; "
            f"client_max_body_size 0; server {{ listen 127.0.0.1:{port}; root {store}/store; "
            f"location / {{ dav_methods PUT; create_full_put_path on; }} }} }}\n")
    open(os.path.join(store, "nginx.conf"), "w").write(conf)
    proc = subprocess.Popen([nginx, "-c", os.path.join(store, "nginx.conf"), "-p", store],
                            stderr=subprocess.DEVNULL)
    wait_for_port(port, 500)
    return proc, f"http://127.0.0.1:{port}"


def start_buildgrid(work):
    """A private BuildGrid (cache only) from $PIPER_TEST_BUILDGRID (a venv),
    or None: its process and grpc:// URL."""
    import socket
    venv = os.environ.get("PIPER_TEST_BUILDGRID")
    if not venv or not os.path.exists(os.path.join(venv, "bin", "bgd")):
        return None, None
    with socket.socket() as s_:
        s_.bind(("127.0.0.1", 0))
        port = s_.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    config = open(os.path.join(here, "..", "tests", "fixtures", "buildgrid-cache.yml")).read()
    store = os.path.join(work, "buildgrid")
    os.makedirs(store)
    path = os.path.join(store, "buildgrid.yml")
    open(path, "w").write(config.replace("@PORT@", str(port)).replace("@DIR@", store))
    proc = subprocess.Popen([os.path.join(venv, "bin", "bgd"), "server", "start", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, 3000)
    return proc, f"grpc://127.0.0.1:{port}"


def wait_for_port(port, tries):
    """Until 127.0.0.1:port accepts a connection (or `tries` have failed)."""
    import socket
    import time
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.01)


def measure_cache(d, piper, rounds):
    """Issue 30: 1,000 steps that copy a file each (the cached-1000 work),
    built in a fresh checkout (empty .piper/ and outputs): without a
    cache, with a warm disk cache, and with a warm remote cache and an
    empty disk cache: HTTP (a private nginx on loopback) and the Remote
    Execution API (a private BuildGrid, when $PIPER_TEST_BUILDGRID names
    its venv). Medians, seconds."""
    import shutil as sh
    import time
    work = tempfile.mkdtemp()
    nginx_proc = None
    grid_proc = None
    try:
        src = os.path.join(work, "src")
        sh.copytree(d, src, ignore=sh.ignore_patterns(".piper", "out", ".ninja*"))
        os.makedirs(os.path.join(src, "out"), exist_ok=True)
        disk = os.path.join(work, "disk")
        # Warm the disk cache from one checkout.
        first = os.path.join(work, "first")
        sh.copytree(src, first)
        subprocess.run([piper, "exec", "all", "-j2", "--disk-cache", disk], cwd=first, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        remote = None
        nginx_proc, http = start_nginx(work)
        if http:
            remote = f"{http}/piper"
            up = os.path.join(work, "up")
            sh.copytree(src, up)
            subprocess.run([piper, "exec", "all", "-j2", "--disk-cache", os.path.join(work, "up-disk"),
                            "--remote-cache", remote], cwd=up, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        grid_proc, grid = start_buildgrid(work)
        if grid:
            up = os.path.join(work, "up-grpc")
            sh.copytree(src, up)
            subprocess.run([piper, "exec", "all", "-j2", "--disk-cache", os.path.join(work, "up-grpc-disk"),
                            "--remote-cache", grid], cwd=up, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times = {"no cache": [], "warm disk cache": [], "warm remote, empty disk": [],
                 "warm REAPI remote (BuildGrid), empty disk": []}
        for r in range(rounds):
            for k, name in enumerate(times):
                if name == "warm remote, empty disk" and not remote:
                    continue
                if name.startswith("warm REAPI") and not grid:
                    continue
                checkout = os.path.join(work, f"c{r}-{k}")
                sh.copytree(src, checkout)
                argv = [piper, "exec", "all", "-j2"]
                if name == "warm disk cache":
                    argv += ["--disk-cache", disk]
                elif name.startswith("warm remote"):
                    argv += ["--disk-cache", os.path.join(work, f"empty-{r}"), "--remote-cache", remote,
                             "--remote-upload", "off"]
                elif name.startswith("warm REAPI"):
                    argv += ["--disk-cache", os.path.join(work, f"empty-grpc-{r}"), "--remote-cache", grid,
                             "--remote-upload", "off"]
                t = time.perf_counter()
                subprocess.run(argv, cwd=checkout, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - t)
        return {name: statistics.median(v) for name, v in times.items() if v}
    finally:
        for proc in (nginx_proc, grid_proc):
            if proc:
                proc.terminate()
                proc.wait()
        sh.rmtree(work, ignore_errors=True)


def measure_watch_latency(d, piper, debounce_ms, rounds):
    """Median and p90 milliseconds from writing a watched input to the
    triggered step's own clock reading, with `piper watch` running."""
    import time
    started = os.path.join(d, "started.ns")
    proc = subprocess.Popen([piper, "watch", "react", "--debounce", f"{debounce_ms}ms"], cwd=d,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def wait_change(previous, limit=10.0):
            end = time.time() + limit
            while time.time() < end:
                try:
                    text = open(started).read().strip()
                    if text and text != previous:
                        return text
                except FileNotFoundError:
                    pass
                time.sleep(0.001)
            return None
        last = wait_change(None)
        samples = []
        for i in range(rounds):
            time.sleep(0.3)  # let the previous run finish
            t0 = time.time_ns()
            with open(os.path.join(d, "trigger.txt"), "w") as f:
                f.write(f"{i}\n")
            got = wait_change(last)
            if got is None:
                continue
            last = got
            samples.append((int(got) - t0) / 1e6)
        samples.sort()
        if not samples:
            return None
        return samples[len(samples) // 2], samples[int(len(samples) * 0.9) - 1 if len(samples) > 1 else 0]
    finally:
        proc.send_signal(2)
        proc.wait(timeout=10)


def measure_agent(piperd, rounds):
    """piperd start time and idle RSS; submit → first step start latency;
    stored log throughput of a step printing 200 MB."""
    import time
    import urllib.request
    work = tempfile.mkdtemp()
    repo = os.path.join(work, "repo")
    os.makedirs(repo)
    mark = os.path.join(work, "started.ns")
    with open(os.path.join(repo, "piper.lua"), "w") as f:
        f.write('step "mark" { run = "date +%s%N > $MARK" }\n'
                'step "flood" { run = "yes piper agent benchmark line of output text | head -c 200000000" }\n')
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git"] + args, cwd=repo, check=True, env=env, stdout=subprocess.DEVNULL)
    data = os.path.join(work, "data")
    t0 = time.time()
    proc = subprocess.Popen([piperd, "start", "--listen", "127.0.0.1:0", "--data", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PIPER_LOG="warn"))
    try:
        addr_file = os.path.join(data, "piperd.addr")
        while not os.path.exists(addr_file):
            time.sleep(0.001)
        base = "http://" + open(addr_file).read().strip()
        while True:
            try:
                urllib.request.urlopen(base + "/api/v1/health").read()
                break
            except Exception:
                time.sleep(0.001)
        start_ms = (time.time() - t0) * 1000
        time.sleep(0.5)
        rss_kb = int([l for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS")][0].split()[1])
        token = open(os.path.join(data, "token")).read().strip()

        def submit(pipeline, extra_env):
            body = json.dumps({"repo": repo, "pipeline": pipeline, "env": extra_env}).encode()
            req = urllib.request.Request(base + "/api/v1/builds", data=body, method="POST",
                                         headers={"Authorization": "Bearer " + token,
                                                  "Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req).read())

        def wait_done(build_id):
            while True:
                req = urllib.request.Request(f"{base}/api/v1/builds/{build_id}",
                                             headers={"Authorization": "Bearer " + token})
                b = json.loads(urllib.request.urlopen(req).read())
                if b["status"] not in ("queued", "running"):
                    return b
                time.sleep(0.005)

        wait_done(submit("mark", {"MARK": mark})["id"])  # warm the repository cache
        samples = []
        for _ in range(rounds):
            if os.path.exists(mark):
                os.remove(mark)
            t = time.time_ns()
            build = submit("mark", {"MARK": mark})
            while not os.path.exists(mark) or not open(mark).read().strip():
                time.sleep(0.0005)
            samples.append((int(open(mark).read()) - t) / 1e6)
            wait_done(build["id"])
        samples.sort()
        t = time.time()
        flood = wait_done(submit("flood", {})["id"])
        log_s = time.time() - t
        if flood["status"] != "success":
            raise RuntimeError(f"the 200 MB build ended {flood['status']}")
        return {"start_ms": start_ms, "idle_rss_mb": rss_kb / 1024, "rounds": rounds,
                "p50": samples[len(samples) // 2], "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
                "log_s": log_s, "log_mb_s": 200 / log_s}
    finally:
        proc.send_signal(15)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def start_piperd(piperd, data, database, extra, env=None):
    """A piperd on a free port; (process, base URL, token)."""
    import time
    import urllib.request
    try:
        os.remove(os.path.join(data, "piperd.addr"))
    except FileNotFoundError:
        pass
    proc = subprocess.Popen([piperd, "start", "--listen", "127.0.0.1:0", "--data", data,
                             "--database", database] + extra,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PIPER_LOG="warn", **(env or {})))
    addr = os.path.join(data, "piperd.addr")
    while not os.path.exists(addr):
        time.sleep(0.005)
    base = "http://" + open(addr).read().strip()
    while True:
        try:
            urllib.request.urlopen(base + "/api/v1/health").read()
            break
        except Exception:
            time.sleep(0.005)
    return proc, base, open(os.path.join(data, "token")).read().strip()


def measure_ui(piperd, rounds):
    """The web UI: server time of the builds page with 10,000 builds stored,
    and how soon a line a step prints shows in a real browser (chromium
    through chromedriver's WebDriver API)."""
    import sqlite3
    import time
    import urllib.request
    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    repo = os.path.join(work, "repo")
    os.makedirs(repo)
    with open(os.path.join(repo, "piper.lua"), "w") as f:
        f.write('step "live" { run = \'while [ ! -e "$GATE" ]; do sleep 0.001; done; '
                'echo "MA""RK $(date +%s%N)"; sleep 0.2\' }\n')
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git"] + args, cwd=repo, check=True, env=env, stdout=subprocess.DEVNULL)
    db = os.path.join(data, "piperd.db")
    proc, base, token = start_piperd(piperd, data, f"sqlite://{db}", [])
    proc.send_signal(15)
    proc.wait(timeout=30)
    # 10,000 finished builds of 5 steps each, written straight into the store.
    con = sqlite3.connect(db)
    now = int(time.time() * 1000)
    for i in range(10000):
        cur = con.execute(
            "INSERT INTO builds (number, repo, git_ref, sha, version, pipeline, status, env, requested_by, "
            "requested_at, started_at, finished_at, agent) VALUES (?, ?, 'main', ?, 'v1.0.0', ?, ?, '{}', "
            "'bench', ?, ?, ?, 'bench')",
            (i + 1, "/bench/repo", "%040x" % i, ("ci", "deploy")[i % 2], ("success", "failed")[i % 7 == 0],
             now - (10000 - i) * 60000, now - (10000 - i) * 60000, now - (10000 - i) * 60000 + 5000))
        for pos in range(5):
            con.execute("INSERT INTO steps (build_id, name, position, status, exit_code, started_at, "
                        "finished_at) VALUES (?, ?, ?, 'success', 0, ?, ?)",
                        (cur.lastrowid, f"step-{pos}", pos, now, now + 1000))
    con.commit()
    con.close()
    proc, base, token = start_piperd(piperd, data, f"sqlite://{db}", [])
    driver = None
    try:
        login = urllib.request.Request(base + "/api/v1/session", method="POST",
                                       data=json.dumps({"token": token}).encode(),
                                       headers={"Content-Type": "application/json"})
        cookie = urllib.request.urlopen(login).headers["Set-Cookie"].split(";")[0]
        session = cookie.split("=", 1)[1]

        def page_ms(path):
            times = []
            for _ in range(rounds * 5):
                t = time.perf_counter()
                body = urllib.request.urlopen(urllib.request.Request(
                    base + path, headers={"Cookie": cookie})).read()
                times.append((time.perf_counter() - t) * 1000)
                assert b"Builds" in body
            times.sort()
            return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]

        builds_page = page_ms("/")
        filtered_page = page_ms("/?status=failed&pipeline=ci")

        # Live log latency in chromium.
        chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
        live = None
        if chromium and chromedriver:
            import socket
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            # Its own process group: chromium goes with it at the end.
            driver = subprocess.Popen([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
            wd = f"http://127.0.0.1:{port}"

            def call(method, path, body=None):
                req = urllib.request.Request(wd + path, method=method,
                                             data=None if body is None else json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                return json.loads(urllib.request.urlopen(req).read())["value"]

            for _ in range(200):
                try:
                    call("GET", "/status")
                    break
                except Exception:
                    time.sleep(0.05)
            caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={work}/profile"]}}}}
            sid = call("POST", "/session", caps)["sessionId"]
            call("POST", f"/session/{sid}/url", {"url": base + "/login"})
            call("POST", f"/session/{sid}/cookie", {"cookie": {"name": "piper_session", "value": session,
                                                               "path": "/", "httpOnly": True}})
            samples = []
            for r in range(rounds):
                gate = os.path.join(work, f"gate-{r}")
                req = urllib.request.Request(base + "/api/v1/builds", method="POST", data=json.dumps(
                    {"repo": repo, "pipeline": "live", "env": {"GATE": gate}}).encode(),
                    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
                build = json.loads(urllib.request.urlopen(req).read())["id"]
                while True:
                    b = json.loads(urllib.request.urlopen(urllib.request.Request(
                        f"{base}/api/v1/builds/{build}", headers={"Cookie": cookie})).read())
                    if any(st["name"] == "live" and st["status"] == "running" for st in b["steps"]):
                        break
                    time.sleep(0.005)
                call("POST", f"/session/{sid}/url", {"url": f"{base}/builds/{build}/steps/live"})
                call("POST", f"/session/{sid}/execute/sync", {"script": """
                    window.__seen = null;
                    const log = document.getElementById('log');
                    new MutationObserver(() => {
                      if (window.__seen === null && log.textContent.includes('MARK ')) window.__seen = Date.now();
                    }).observe(log, {childList: true, subtree: true, characterData: true});
                    return true;""", "args": []})
                # The page has read the log and follows it; give the stream a moment to open.
                while call("POST", f"/session/{sid}/execute/sync", {
                        "script": "return document.getElementById('log-status').textContent", "args": []}) \
                        != "Streaming…":
                    time.sleep(0.01)
                open(gate, "w").close()
                while True:
                    seen = call("POST", f"/session/{sid}/execute/sync", {"script": "return window.__seen",
                                                                         "args": []})
                    if seen:
                        break
                    time.sleep(0.005)
                text = call("POST", f"/session/{sid}/execute/sync", {
                    "script": "return document.getElementById('log').textContent", "args": []})
                mark_ns = int(text.split("MARK ")[1].split()[0])
                samples.append(seen - mark_ns / 1e6)
            samples.sort()
            live = (samples[len(samples) // 2], samples[-1])
            big = measure_big_log(base, token, repo, env, call, sid, driver.pid)
            call("DELETE", f"/session/{sid}")
        return {"builds": 10000, "page": builds_page, "filtered": filtered_page, "live": live,
                "big": big, "rounds": rounds}
    finally:
        if driver:
            os.killpg(driver.pid, 9)
            driver.wait()
        proc.send_signal(15)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def renderer_pss_kib(driver_pid):
    """The largest PSS of the chromium renderers the driver started (KiB)."""
    parent = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read()
                parent[int(pid)] = int(stat[stat.rfind(")") + 2:].split()[1])
            except OSError:
                pass
    largest = 0
    for pid in parent:
        up = pid
        while up in parent and up != driver_pid:
            up = parent[up]
        if up != driver_pid:
            continue
        try:
            if b"--type=renderer" not in open(f"/proc/{pid}/cmdline", "rb").read():
                continue
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    largest = max(largest, int(line.split()[1]))
        except OSError:
            pass
    return largest


def measure_big_log(base, token, repo, env, call, sid, driver_pid):
    """A 200 MB, 2.5 M-line coloured log in the web UI: how long each move
    of the log view takes (click → lines drawn) and the renderer's PSS."""
    import time
    import urllib.request
    with open(os.path.join(repo, "piper.lua"), "a") as f:
        f.write('step "big" { run = [[awk \'BEGIN { for (i = 2; i <= 2500001; i++) { '
                'if (i == 1800001) print "err" "or: the boom"; '
                'else if (i == 1200001) print "nee" "dle in the haystack"; '
                'else printf "\\033[32m%07d\\033[0m a line of a long log, padded to about eighty bytes .........\\n", i '
                '} }\']] }\n')
    subprocess.run(["git", "commit", "-qam", "big"], cwd=repo, check=True, env=env)
    req = urllib.request.Request(base + "/api/v1/builds", method="POST", data=json.dumps(
        {"repo": repo, "pipeline": "big"}).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    build = json.loads(urllib.request.urlopen(req).read())["id"]
    while True:
        b = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{base}/api/v1/builds/{build}", headers={"Authorization": "Bearer " + token})).read())
        if b["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    settle = """const done = arguments[arguments.length - 1];
        const log = document.getElementById('log');
        const wait = () => (log && log.querySelector('.line') && !log.hasAttribute('aria-busy'))
          ? done(true) : setTimeout(wait, 2);
        wait();"""

    def timed(script):
        t = time.perf_counter()
        call("POST", f"/session/{sid}/execute/sync", {"script": script, "args": []})
        call("POST", f"/session/{sid}/execute/async", {"script": settle, "args": []})
        return (time.perf_counter() - t) * 1000

    t = time.perf_counter()
    call("POST", f"/session/{sid}/url", {"url": f"{base}/builds/{build}/steps/big"})
    call("POST", f"/session/{sid}/execute/async", {"script": settle, "args": []})
    moves = {"open at the end": (time.perf_counter() - t) * 1000}
    pss = [renderer_pss_kib(driver_pid)]
    go = ("const f = document.getElementById('goto'); f.kind.value = 'line'; "
          "f.where.value = '1234567'; f.requestSubmit();")
    # Find searches from the window's start: from the top, ~100 MB are read.
    for name, script in [("top", "document.getElementById('top').click()"),
                         ("find from the top (line 1,200,001)", "const f = document.getElementById('find'); "
                                                                "f.text.value = 'NEEDLE'; f.requestSubmit();"),
                         ("line 1,234,567", go),
                         ("first error", "document.getElementById('first-error').click()"),
                         ("bottom", "document.getElementById('bottom').click()")]:
        moves[name] = timed(script)
        pss.append(renderer_pss_kib(driver_pid))
    earlier = [timed("document.getElementById('earlier').click()") for _ in range(40)]
    pss.append(renderer_pss_kib(driver_pid))
    earlier.sort()
    moves["load earlier (p50 of 40)"] = earlier[len(earlier) // 2]
    return {"moves": moves, "pss_mib": max(pss) / 1024}


def measure_cluster(piperd, rounds):
    """Several agents on one PostgreSQL: pickup latency on an agent that did
    not receive the submit (with NOTIFY, and with notifications off), the
    time to rescue a build whose agent was killed, and the store's queue
    throughput (claim + finish, 4 agents, no steps)."""
    import time
    import urllib.request
    admin = os.environ.get("PIPER_BENCH_POSTGRES_URL",
                           os.environ.get("PIPER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"))
    base_url = admin.rsplit("/", 1)[0]
    work = tempfile.mkdtemp()
    procs = []

    def fresh_db(name):
        subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name}", "-c", f"CREATE DATABASE {name}"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return f"{base_url}/{name}"

    try:
        repo = os.path.join(work, "repo")
        os.makedirs(repo)
        mark = os.path.join(work, "mark")
        with open(os.path.join(repo, "piper.lua"), "w") as f:
            f.write('step "mark" { run = "date +%s%N > $MARK" }\n'
                    'pipeline "long" { step "l" { run = "echo $PIPER_AGENT > $MARK.$PIPER_BUILD_ID; sleep 60" }, '
                    'retry_agent_lost = 1 }\n')
        env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
                   GIT_COMMITTER_EMAIL="b@b")
        for a in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
            subprocess.run(["git"] + a, cwd=repo, check=True, env=env, stdout=subprocess.DEVNULL)

        def api(base, token, path, body=None):
            req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                         method="GET" if body is None else "POST",
                                         headers={"Authorization": "Bearer " + token,
                                                  "Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req).read())

        def pickup(notify):
            db = fresh_db("piper_bench_pickup")
            front, fbase, ftoken = start_piperd(piperd, os.path.join(work, f"front-{notify}"), db, ["--workers", "0"])
            worker, _, _ = start_piperd(piperd, os.path.join(work, f"worker-{notify}"), db, ["--workers", "2"],
                                        None if notify else {"PIPERD_NOTIFY": "off"})
            procs.extend([front, worker])
            samples = []
            for i in range(rounds + 1):
                if os.path.exists(mark):
                    os.remove(mark)
                t = time.time_ns()
                api(fbase, ftoken, "/api/v1/builds", {"repo": repo, "pipeline": "mark", "env": {"MARK": mark}})
                while not os.path.exists(mark) or not open(mark).read().strip():
                    time.sleep(0.0005)
                if i > 0:  # the first warms the repository cache
                    samples.append((int(open(mark).read()) - t) / 1e6)
                time.sleep(0.05)
            for p in (front, worker):
                p.send_signal(15)
                p.wait(timeout=60)
            samples.sort()
            return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]

        with_notify = pickup(True)
        without_notify = pickup(False)

        # Rescue: kill -9 the agent running a build; time until the other starts it again.
        db = fresh_db("piper_bench_rescue")
        lease, heartbeat = 3.0, 1.0
        flags = ["--workers", "1", "--lease", "3s", "--heartbeat", "1s"]
        a, abase, atoken = start_piperd(piperd, os.path.join(work, "rescue-a"), db, flags)
        b, _, _ = start_piperd(piperd, os.path.join(work, "rescue-b"), db, flags)
        procs.extend([a, b])
        build = api(abase, atoken, "/api/v1/builds", {"repo": repo, "pipeline": "long", "env": {"MARK": mark}})
        first = f"{mark}.{build['id']}"
        while not os.path.exists(first) or not open(first).read().strip():
            time.sleep(0.005)
        # Which process runs it: ask for the build's agent id.
        owner = api(abase, atoken, f"/api/v1/builds/{build['id']}")["agent_id"]
        victim = a if open(os.path.join(work, "rescue-a", "agent-id")).read().strip() == owner else b
        os.remove(first)
        t = time.time()
        victim.kill()
        victim.wait()
        while not os.path.exists(first) or not open(first).read().strip():
            time.sleep(0.005)
        rescue_s = time.time() - t

        # Store-level queue throughput.
        qdb = fresh_db("piper_bench_queue")
        run = subprocess.run(["cargo", "bench", "--quiet", "--bench", "queue", "--", qdb],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError("queue benchmark: " + (run.stderr.strip().splitlines() or ["failed"])[-1])
        queue = json.loads(run.stdout.strip().splitlines()[-1])
        return {"rounds": rounds, "notify": with_notify, "poll": without_notify, "rescue_s": rescue_s,
                "lease": lease, "heartbeat": heartbeat, "queue": queue}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def fmt_time(s):
    if s is None:
        return "failed"
    return f"{s * 1000:.1f} ms" if s < 10 else f"{s:.2f} s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--piper", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="fewer runs")
    args = ap.parse_args()
    piper = args.piper
    present = {p: shutil.which(p) for p in PEERS}
    q = args.quick
    rows = []  # (workload, {tool: seconds}, target text, ratio-checks)
    notes = []

    def peer_cmds(cmds):
        return [(n, c) for n, c in cmds if n == "piper" or present.get(n)]

    # 1. Overhead: one step running `true`.
    d = os.path.join(args.work, "overhead")
    m = hyperfine(d, peer_cmds([("piper", f"{piper} exec all"), ("make", "make -s"),
                                ("ninja", "ninja -j1 --quiet"), ("just", "just")]), runs=200 if q else 600,
                  rounds=4 if q else 6)
    # Issue 12 tightened the make target from 1.2× to 1.0× (configuration cached).
    rows.append(("overhead: 1 step `true`", m, "≤ 1.0× just, ≤ 1.0× make", [("just", 1.0), ("make", 1.0)]))

    # 2. Wide and deep DAGs, -j2.
    # The 1000-step row runs in rotating rounds too: one block per tool had
    # it at 1.00x and 1.37x ninja in two runs of the same binaries.
    for n, runs, rounds in ((1000, 6 if q else 15, 3), (10000, 2 if q else 5, 1)):
        d = os.path.join(args.work, f"dag-{n}")
        cmds = [("piper", f"{piper} exec all -j2"), ("make", "make -s -j2"), ("ninja", "ninja -j2 --quiet")]
        if n <= 1000:
            cmds.append(("just", "just"))  # just runs dependencies one at a time
        m = hyperfine(d, peer_cmds(cmds), runs=runs, warmup=1,
                      prepare="rm -f .ninja_log .ninja_deps", rounds=rounds)
        target = "≤ 1.2× ninja" if n == 1000 else "(reported)"
        rows.append((f"DAG: {n} no-op steps, -j2", m, target, [("ninja", 1.2)] if n == 1000 else []))

    # 3. Cached no-op rerun of 1000 steps with real input and output files.
    d = os.path.join(args.work, "cached-1000")
    for warm in ([piper, "exec", "all", "-j2"], ["make", "-s", "-j2"], ["ninja", "-j2", "--quiet"]):
        if warm[0] == piper or present.get(warm[0]):
            subprocess.run(warm, cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = hyperfine(d, peer_cmds([("piper", f"{piper} exec all -j2"), ("make", "make -s -j2"),
                                ("ninja", "ninja -j2 --quiet")]), runs=60 if q else 150,
                  rounds=3 if q else 5)
    rows.append(("cached no-op rerun: 1000 steps, all up to date", m, "≤ 1.5× ninja", [("ninja", 1.5)]))

    # 4. Evaluation of a 10 000-step piper.lua: evaluated, and from the
    # configuration cache.
    d = os.path.join(args.work, "dag-10000")
    m = hyperfine(d, [("piper graph --format json", f"{piper} --no-config-cache graph all --format json"),
                      ("piper list", f"{piper} --no-config-cache list")], runs=5 if q else 15)
    rows.append(("evaluate 10 000 steps (whole process)", m, "< 100 ms", []))
    m = hyperfine(d, [("piper graph --format json", f"{piper} graph all --format json"),
                      ("piper list", f"{piper} list")], runs=5 if q else 15, warmup=1)
    rows.append(("10 000 steps from the configuration cache (whole process)", m, "< 20 ms", []))

    inproc = None
    bench_bin = os.path.join(os.path.dirname(os.path.dirname(piper)), "release")
    try:
        run = subprocess.run(["cargo", "bench", "--quiet", "--bench", "evaluate", "--",
                              os.path.join(d, "piper.lua")], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}")
        inproc = json.loads(run.stdout.strip().splitlines()[-1])
    except Exception as e:  # reported, not hidden
        notes.append(f"in-process evaluation benchmark failed: {e}")
    rss_exec = peak_rss_mb(d, [piper, "exec", "all", "-j2"])
    rss_eval = peak_rss_mb(d, [piper, "graph", "all", "--format", "json"])

    # 4b. A real C library (Lua 5.4, ~33 files), one step per file with
    # depfiles, against make -j2 on the same files.
    clib = os.path.join(args.work, "clib")
    if os.path.isdir(clib):
        clean = "rm -f *.o *.d liblua.a .piper/state.json .piper/state.log"
        full = hyperfine(clib, [("piper", f"{piper} exec all -j2"), ("make", "make -s -j2")],
                         runs=3 if q else 10, prepare=f"sh -c '{clean}'")
        rows.append(("C library (Lua 5.4): full build, -j2", full, "≤ 1.05× make", [("make", 1.05)]))
        for warm in ([piper, "exec", "all", "-j2"], ["make", "-s", "-j2"]):
            subprocess.run(warm, cwd=clib, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        noop = hyperfine(clib, [("piper", f"{piper} exec all -j2"), ("make", "make -s -j2")],
                         runs=30 if q else 60, rounds=3)
        rows.append(("C library: no-op", noop, "≤ 1.2× make", [("make", 1.2)]))
        header = hyperfine(clib, [("piper", f"{piper} exec all -j2"), ("make", "make -s -j2")],
                           runs=3 if q else 10, prepare="sh -c 'echo >> lgc.h'")
        rows.append(("C library: header change (lgc.h)", header, "≤ 1.1× make", [("make", 1.1)]))
    # 5. Output heavy: 200 MB through piper vs straight to /dev/null.
    d = os.path.join(args.work, "output")
    direct = open(os.path.join(d, "Makefile")).read().split("@", 1)[1].strip()
    # `| cat` is the floor for anything that reads the output at all: the
    # bytes cross a pipe, which the direct run (into /dev/null) never does.
    m = hyperfine(d, [("piper", f"{piper} exec all"), ("direct", f"sh -c \"{direct}\""),
                      ("through cat", f"sh -c \"{direct} | cat\"")],
                  runs=5 if q else 15, warmup=1, rounds=3)
    rows.append(("output: 200 MB through piper vs direct", m, "≤ 1.3× direct", [("direct", 1.3)]))

    # 6. Watch latency: file write -> the step's process has started.
    watch_latency = measure_watch_latency(os.path.join(args.work, "watch"), piper, 50, 8 if q else 20)
    cache = None
    try:
        cache = measure_cache(os.path.join(args.work, "cached-1000"), piper, 3 if q else 7)
    except Exception as e:  # reported, not hidden
        notes.append(f"cache benchmark failed: {e!r}")
    shared_c = agent_c = None
    clib = os.path.join(args.work, "clib-shared")
    if os.path.isdir(clib):
        import cache_c
        try:
            shared_c = cache_c.measure_shared_c(clib, piper, 2 if q else 5)
            agent_c = cache_c.measure_piperd_c(clib, piper, os.path.join(os.path.dirname(piper), "piperd"),
                                               2 if q else 5)
        except Exception as e:  # reported, not hidden
            notes.append(f"shared-cache C benchmark failed: {e!r}")
    scaled = None
    sizes = sorted({int(name[len("cached-"):]) for name in os.listdir(args.work)
                    if name.startswith("cached-") and name[len("cached-"):].isdigit()})
    if len(sizes) > 1 and not q:
        import scale
        try:
            scaled = scale.measure(args.work, piper, sizes, 10000)
            scale.svg(scaled, os.path.join(os.path.dirname(args.out), "scale.svg"))
        except Exception as e:  # reported, not hidden
            notes.append(f"scale benchmark failed: {e!r}")
    remote_exec = None
    if os.environ.get("PIPER_TEST_BUILDGRID") and os.path.isdir(clib):
        import remote_exec as rx
        scratch = tempfile.mkdtemp()
        try:
            cluster = rx.Cluster(scratch, 1)
            try:
                overhead = rx.measure_overhead(scratch, piper, cluster)
            finally:
                cluster.close()
            remote_exec = (overhead, rx.measure_wide(scratch, piper, 50 if q else 200, [2, 4, 8]),
                           rx.measure_vs_bazel(scratch, piper, clib))
        except Exception as e:  # reported, not hidden
            notes.append(f"remote execution benchmark failed: {e!r}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    agent = None
    try:
        agent = measure_agent(os.path.join(os.path.dirname(piper), "piperd"), 5 if q else 30)
    except Exception as e:  # reported, not hidden
        notes.append(f"agent benchmark failed: {e}")
    ui = None
    try:
        ui = measure_ui(os.path.join(os.path.dirname(piper), "piperd"), 5 if q else 20)
    except Exception as e:  # reported, not hidden
        notes.append(f"web UI benchmark failed: {e!r}")
    cluster = None
    try:
        cluster = measure_cluster(os.path.join(os.path.dirname(piper), "piperd"), 10 if q else 50)
    except Exception as e:  # reported, not hidden
        notes.append(f"cluster benchmark failed: {e}")

    # Report.
    tools = ["piper"] + PEERS + ["direct"]
    lines = ["# Benchmarks", "",
             "Generated by `bench/run` (do not edit by hand). Piper and its peers run the same "
             "generated work (`bench/gen.py`: a Makefile, a build.ninja, a justfile and a piper.lua "
             "with the same steps and edges) in one run, on one machine, so the ratios mean more "
             "than the absolute times. Medians by hyperfine; for millisecond workloads, of "
             "several hyperfine calls whose order of tools rotates.", "",
             f"- date: {datetime.date.today()}",
             f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
             "- peers: " + ", ".join(f"{p} {'present' if present[p] else 'ABSENT'}" for p in PEERS), ""]
    lines += ["| workload | piper | make | ninja | just | piper ÷ peer | target | met |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m, target, checks in rows:
        pm = m.get("piper") or m.get("piper graph --format json")
        cells = []
        for t in PEERS:
            if t in m:
                cells.append(fmt_time(m[t]))
            elif not present.get(t):
                cells.append("absent")
            else:
                cells.append("—")
        ratios = []
        for t, v in m.items():
            if t == "piper" or v is None or pm is None or t.startswith("piper"):
                continue
            ratios.append(f"{pm / v:.2f}× {t}")
        met = []
        for t, limit in checks:
            if m.get(t) and pm:
                met.append("yes" if pm / m[t] <= limit else f"no ({pm / m[t]:.2f}× {t})")
        if not checks and target.startswith("<") and pm is not None:
            limit_ms = float(target.strip("< ").split()[0])
            met.append("yes" if pm * 1000 < limit_ms else "no")
        extra = [f"{k}: {fmt_time(v)}" for k, v in m.items() if k.startswith("piper ") and k != "piper graph --format json"]
        lines.append(f"| {name} | {fmt_time(pm)} | {' | '.join(cells)} | {', '.join(ratios) or '—'} | "
                     f"{target} | {'; '.join(met) or '—'} |")
        if extra or "direct" in m:
            pass
    lines += ["", "Other measurements:", ""]
    by_name = {name: m for name, m, _, _ in rows}
    o = by_name["output: 200 MB through piper vs direct"]
    lines.append(f"- output heavy: piper {fmt_time(o.get('piper'))}, direct {fmt_time(o.get('direct'))}, "
                 f"the same command piped into `cat` {fmt_time(o.get('through cat'))}"
                 + (f" (piper {o['piper'] / o['through cat']:.2f}× cat)" if o.get("piper") and o.get("through cat") else ""))
    ev = by_name["evaluate 10 000 steps (whole process)"]
    lines.append(f"- evaluation, whole process: `piper graph --format json` {fmt_time(ev.get('piper graph --format json'))}, "
                 f"`piper list` {fmt_time(ev.get('piper list'))}")
    if inproc:
        lines.append(f"- evaluation, in process (Lua state + evaluate + validate, 10 000 steps): "
                     f"median {inproc['median_ms']:.1f} ms over {inproc['runs']} runs of {inproc['steps']} steps (target < 100 ms: "
                     f"{'met' if inproc['median_ms'] < 100 else 'missed'})")
    if cache:
        cold = cache["no cache"]
        parts = [f"{name} {t * 1000:.0f} ms ({t / cold:.2f}×)" for name, t in cache.items()]
        worst = max(cache.values())
        remotes = [t / cold for name, t in cache.items() if "remote" in name]
        goal = (f"; a warm remote ≤ 20% of the cold build: {'met' if remotes and max(remotes) <= 0.2 else 'missed'}"
                if remotes else "")
        lines.append("- cache, 1,000 steps copying a file each, a fresh checkout (empty `.piper/` and outputs), "
                     "`piper exec all -j2`: " + ", ".join(parts) + " (targets: fetching never slower than "
                     f"running them: {'met' if worst <= cold else 'missed'}{goal})")
    if shared_c or agent_c:
        import cache_c
        lines.extend(cache_c.lines(shared_c, agent_c))
    if remote_exec:
        import remote_exec as rx
        lines.extend(rx.lines(*remote_exec))
    if scaled:
        import scale
        lines.extend(scale.lines(scaled, "scale.svg"))
    if watch_latency:
        med, p90 = watch_latency
        lines.append(f"- watch latency, file write → step process started (debounce 50 ms, includes starting "
                     f"`sh` and `date`): median {med:.1f} ms, p90 {p90:.1f} ms (target ≤ debounce + 20 ms = 70 ms: "
                     f"{'met' if med <= 70 else 'missed'})")
    lines.append(f"- peak RSS, `piper exec all -j2` on 10 000 steps: {rss_exec:.1f} MB; "
                 f"`piper graph` on it: {rss_eval:.1f} MB (target < 100 MB: {'met' if rss_exec < 100 else 'missed'})")
    lines.append("- just runs dependencies one at a time (it has no -j), so it is left out of the "
                 "10 000-step DAG; make and piper run a plain command like `true` without a shell, "
                 "ninja always uses /bin/sh")
    if agent:
        lines.append(f"- piperd start (process start → API answering): {agent['start_ms']:.0f} ms; idle RSS "
                     f"{agent['idle_rss_mb']:.1f} MB")
        lines.append(f"- agent pickup, submit → first step started, idle agent, {agent['rounds']} builds: p50 "
                     f"{agent['p50']:.1f} ms, p99 {agent['p99']:.1f} ms (targets ≤ 20 ms / ≤ 100 ms: "
                     f"{'met' if agent['p50'] <= 20 and agent['p99'] <= 100 else 'missed'}); this includes "
                     "`git fetch` into the cache, a worktree checkout, and evaluating piper.lua")
        lines.append(f"- stored log throughput, a step printing 200 MB into SQLite: {agent['log_mb_s']:.0f} MB/s "
                     f"({agent['log_s']:.2f} s from submit to finished)")
    if ui:
        (p50, p99), (f50, f99) = ui["page"], ui["filtered"]
        lines.append(f"- web UI builds page with {ui['builds']:,} builds stored (SQLite), request → whole page: "
                     f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; filtered by status and pipeline p50 {f50:.1f} ms "
                     f"(target ≤ 50 ms p50: {'met' if max(p50, f50) <= 50 else 'missed'})")
        if ui["live"]:
            l50, lmax = ui["live"]
            lines.append(f"- web UI live log, a step prints a line → the line is on the page in chromium, "
                         f"{ui['rounds']} builds: p50 {l50:.1f} ms, max {lmax:.1f} ms (target ≤ 100 ms: "
                         f"{'met' if l50 <= 100 else 'missed'})")
        else:
            lines.append("- web UI live log: not measured (chromium or chromedriver missing)")
        if ui.get("big"):
            moves = ", ".join(f"{name} {ms:.0f} ms" for name, ms in ui["big"]["moves"].items())
            worst = max(ui["big"]["moves"].values())
            lines.append(f"- web UI, a 200 MB log of 2.5 M coloured lines, click → lines drawn in chromium: {moves} "
                         f"(target < 300 ms: {'met' if worst < 300 else 'missed'}); renderer PSS at most "
                         f"{ui['big']['pss_mib']:.0f} MiB, no forced collection (target < 150 MB: "
                         f"{'met' if ui['big']['pss_mib'] * 1.048576 < 150 else 'missed'})")
    if cluster:
        n50, n99 = cluster["notify"]
        p50, p99 = cluster["poll"]
        lines.append(f"- cluster pickup on PostgreSQL, submit to an API-only agent → first step started on "
                     f"another agent, {cluster['rounds']} builds: with NOTIFY p50 {n50:.1f} ms, p99 {n99:.1f} ms "
                     f"(targets ≤ 20 ms / ≤ 100 ms: {'met' if n50 <= 20 and n99 <= 100 else 'missed'}); with "
                     f"notifications off (the 1 s poll) p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        qd = cluster["queue"]
        lines.append(f"- queue throughput at the store level, {qd['agents']} agents claiming and finishing "
                     f"{qd['builds']} builds (no steps) on PostgreSQL: {qd['per_second']} builds/s (target "
                     f"≥ 1,000/s: {'met' if qd['per_second'] >= 1000 else 'missed'})")
        lines.append(f"- rescue of a build whose agent was killed (kill -9) → started again on another agent: "
                     f"{cluster['rescue_s']:.2f} s with lease {cluster['lease']:.0f} s and heartbeat "
                     f"{cluster['heartbeat']:.0f} s (target ≤ lease + heartbeat: "
                     f"{'met' if cluster['rescue_s'] <= cluster['lease'] + cluster['heartbeat'] else 'missed'})")
    def over(workload, peer, limit):
        for name, m, _, _ in rows:
            if name == workload and m.get("piper") and m.get(peer):
                return m["piper"] / m[peer] > limit
        return False

    def slower_than(workload, seconds):
        """Whether piper's `graph --format json` row starting `workload` took longer."""
        m = next((m for name, m, _, _ in rows if name.startswith(workload)), {})
        return (m.get("piper graph --format json") or 0) > seconds

    lines += ["", "Where a target is missed, what the profiles show (`perf record`, `strace -c`):", ""]
    if over("overhead: 1 step `true`", "make", 1.0):
        lines.append(
            "- overhead: `piper exec` of one step runs fewer instructions than make (~0.9 M against "
            "~2.4 M, callgrind) and can still be slower: its kernel time is higher (page faults on a "
            "larger program: `next_uptodate_folio`, the fault-around of its text, is most of the "
            "difference; tokio's runtime, the configuration cache and the terminal touch more pages). "
            "Done: non-PIE, the unwinder linked in, executed functions placed together (link/piper.symbol-order), ring instead of aws-lc, xxh3 checksums, clap "
            "building only the given subcommand, the stdlib digested at build time, no tracing registry, no CPU count or /proc scan for one step. "
            "Left: a smaller `piper` (the remote client and its HTTP/TLS stack in a separate binary "
            "or behind a feature); clap's parse is still ~a quarter of the instructions. Not kept: a static "
            "glibc (std then spawns with `fork`); mimalloc (its start-up faults in huge pages: one step "
            "3.5 → 5.5–7.7 ms on the VM where it was tried).")
    if over("DAG: 1000 no-op steps, -j2", "ninja", 1.2):
        lines.append(
            "- DAG: each spawn copies the whole environment: Piper sets `PIPER_*` variables per step, so "
            "std's `Command` reads every variable into a map and writes them back out as an envp array "
            "(~72 K instructions a step, a third of a 1000-step build, callgrind). Spawning with an "
            "environment built once per build (posix_spawn directly) would remove it; not done.")
    if over("cached no-op rerun: 1000 steps, all up to date", "ninja", 1.5):
        lines.append(
            "- cached no-op: after start-up and the configuration cache, ~4 µs per step: its record read "
            "from `.piper/state.bin` (digests as bytes since format 2, names and paths as owned strings), two `fstatat`s "
            "relative to the project root, the record compared field by field, one event rendered. ninja "
            "reads a compact binary log and does two stats per edge with no per-edge allocation.")
    if slower_than("10 000 steps from the configuration cache", 0.020):
        lines.append(
            "- 10 000 steps from the configuration cache: decoding the graph makes ~10 allocations a step "
            "(glibc's malloc costs ~180 instructions each in a process that has freed nothing yet), then "
            "`graph` writes 1.7 MB of indented JSON.")
    lines.append(
        "- output heavy: the direct run never reads its output (`head` writes to /dev/null); Piper "
        "copies every byte out of a pipe, splits ~2.7 M lines (memchr) and writes them prefixed. "
        "System time (pipe copies) dominates: the same command piped into `cat`, which does nothing "
        "with the bytes, costs as much, so \"≤ 1.3× direct\" is below what any tool that captures "
        "output can reach on this machine; piper against `cat` is the figure to watch.")
    if slower_than("evaluate 10 000 steps", 0.100):
        lines.append(
            "- evaluation of 10 000 steps (~460 M instructions, callgrind): Lua's parser is 30% of it, "
            "reading each step's table into Rust as it is defined a quarter (mostly mlua's calls: ~800 "
            "instructions a table lookup), the rest the Lua VM, validation and the JSON; the "
            "configuration cache avoids all but the JSON.")
    if agent and agent["p50"] > 20:
        lines.append("- agent pickup p50: a build starts with git processes (fetch into the mirror, "
                     "rev-parse, a worktree checkout beside `describe`) at 3–8 ms each; piperd's own work "
                     "is ~1 ms.")
    if cluster and cluster["notify"][0] > 20:
        single = f"{agent['p50']:.1f} ms" if agent else "the single-agent figure"
        lines.append(f"- cluster pickup p50: the same git and Lua work as a single agent's pickup ({single}) "
                     "plus the hop between agents: the submitting agent's commit and NOTIFY, the worker's "
                     "wake-up, and a claim that reads up to 64 queued candidates to match requirements "
                     "before its UPDATE (two statements in a transaction, where one agent used one).")
    if notes:
        lines += ["", "Not measured in this run:", ""] + [f"- {n}" for n in notes]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
