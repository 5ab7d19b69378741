"""Issue 31's benchmarks: steps run on a Remote Execution API cluster — a
private BuildGrid 0.9.1 (Execution + Bots, its scheduler in a PostgreSQL
database made for the run) with N test workers (tests/fixtures/
reapi_worker.py: no REAPI worker can be installed here), all on this
machine, side by side with the same work run locally and with Bazel 4.2.3
driving the same server.

- overhead per remote step: 40 one-line steps in a chain, remote vs local;
  the server's own queueing (from the execution metadata) reported apart;
- a wide build: N independent compile steps (generated C files) with 2, 4
  and 8 workers, against `-j2` local;
- the clib-shared C library (gen.py), cold on the cluster: piper against
  Bazel (`--remote_executor`, genrules of the same compiles).

Needs $PIPER_TEST_BUILDGRID (BuildGrid's venv) and PostgreSQL at
$PIPER_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres).

    python3 bench/remote_exec.py WORK target/release/piper
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402  (wait_for_port)

HERE = os.path.dirname(os.path.abspath(__file__))
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


class Cluster:
    """A private BuildGrid with execution, and `workers` workers."""
    made = 0

    def __init__(self, work, workers):
        import socket
        Cluster.made += 1
        self.venv = os.environ["PIPER_TEST_BUILDGRID"]
        admin = os.environ.get("PIPER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        self.db = f"piper_bench_{os.getpid()}_{Cluster.made}"
        self.admin = admin
        base = admin.rsplit("/", 1)[0].replace("postgres://", "postgresql://", 1)
        subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {self.db}"], check=True, **QUIET)
        url = f"{base}/{self.db}"
        subprocess.run([f"{self.venv}/bin/bgd", "migrate", "apply", url], check=True, **QUIET)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = os.path.join(work, f"grid-{Cluster.made}")
        os.makedirs(self.dir)
        config = open(os.path.join(HERE, "..", "tests", "fixtures", "buildgrid-execution.yml")).read()
        config = (config.replace("@PORT@", str(self.port)).replace("@DIR@", self.dir)
                  .replace("@DATABASE_URL@", url))
        # BuildGrid serves 10 RPCs at once by default, and each worker's
        # long poll holds one: 8 workers would leave the client 2.
        config = "thread-pool-size: 100\nmaximum-concurrent-rpcs: 100\n" + config
        path = os.path.join(self.dir, "bg.yml")
        open(path, "w").write(config)
        self.procs = [subprocess.Popen([f"{self.venv}/bin/bgd", "server", "start", path], **QUIET)]
        report.wait_for_port(self.port, 6000)
        worker = os.path.join(HERE, "..", "tests", "fixtures", "reapi_worker.py")
        for i in range(workers):
            proc = subprocess.Popen([f"{self.venv}/bin/python", worker, f"127.0.0.1:{self.port}", f"worker-{i}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            proc.stdout.readline()  # "ready"
            self.procs.append(proc)
        self.url = f"grpc://127.0.0.1:{self.port}"

    def close(self):
        for proc in reversed(self.procs):
            proc.kill()
            proc.wait()
        subprocess.run(["psql", self.admin, "-qc", f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"], **QUIET)


def run_json(argv, cwd):
    """The step_finished events of `argv --json`: [(step, ms, message)]."""
    out = subprocess.run(argv + ["--json"], cwd=cwd, check=True, capture_output=True, text=True).stdout
    finished = []
    for line in out.splitlines():
        event = json.loads(line)
        if event.get("event") == "step_finished":
            finished.append((event["step"], event["duration_ms"], event.get("message") or ""))
    return finished


def chain(d, n):
    """n one-line steps in a chain (each needs the last's output)."""
    os.makedirs(os.path.join(d, "src"), exist_ok=True)
    open(os.path.join(d, "src", "seed.txt"), "w").write("seed\n")
    lines = ['local last = step "s0" { inputs = "src/seed.txt", outputs = "out/s0", '
             'run = "mkdir -p out && cp src/seed.txt out/s0" }']
    for i in range(1, n):
        lines.append(f'last = step "s{i}" {{ deps = {{ last }}, inputs = "out/s{i - 1}", outputs = "out/s{i}", '
                     f'run = "cp out/s{i - 1} out/s{i}" }}')
    lines.append('pipeline "all" { last }')
    open(os.path.join(d, "piper.lua"), "w").write("\n".join(lines) + "\n")


def wide(d, n):
    """n independent compiles of generated C files, as a build's leaves."""
    os.makedirs(os.path.join(d, "src"), exist_ok=True)
    for i in range(n):
        body = "\n".join(f"int f{i}_{k}(int x) {{ return x * {k} + {i}; }}" for k in range(40))
        open(os.path.join(d, "src", f"f{i}.c"), "w").write(body + "\n")
    open(os.path.join(d, "piper.lua"), "w").write(
        'local fs = require "piper.fs"\nlocal objects = {}\n'
        'for _, c in ipairs(fs.glob "src/*.c") do\n'
        '  local o = "out/" .. c:gsub("^src/", ""):gsub("%.c$", ".o")\n'
        '  objects[#objects + 1] = step("cc " .. c) { inputs = c, outputs = o, env = { PATH = "/usr/bin:/bin" },\n'
        '    run = "mkdir -p out && cc -O2 -c " .. c .. " -o " .. o }\n'
        'end\npipeline "all" { table.unpack(objects) }\n')


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def measure_overhead(work, piper, cluster, n=40):
    d = os.path.join(work, "chain")
    chain(d, n)
    fresh = lambda name: shutil.copytree(d, os.path.join(work, name))  # noqa: E731
    remote = run_json([piper, "exec", "all", "--disk-cache", os.path.join(work, "disk-chain"),
                       "--remote-exec", cluster.url], fresh("chain-remote"))
    local = run_json([piper, "exec", "all"], fresh("chain-local"))
    queued = [int(m.group(1)) for _, _, msg in remote if (m := re.search(r"queued (\d+) ms", msg))]
    ran = [int(m.group(1)) for _, _, msg in remote if (m := re.search(r"ran (\d+) ms", msg))]
    remote_ms = [ms for _, ms, _ in remote]
    local_ms = [ms for _, ms, _ in local]
    beyond = [r - q - statistics.median(local_ms) for r, q in zip(remote_ms, queued)]
    # What is neither the server's queue nor the worker's run: piper's
    # work and the RPCs (upload, Execute, the result, the download).
    client = [r - q - w for r, q, w in zip(remote_ms, queued, ran)]
    return {"steps": n, "remote_p50": pct(remote_ms, 0.5), "remote_p99": pct(remote_ms, 0.99),
            "local_p50": pct(local_ms, 0.5), "queued_p50": pct(queued, 0.5), "ran_p50": pct(ran, 0.5),
            "beyond_p50": pct(beyond, 0.5), "beyond_p99": pct(beyond, 0.99),
            "client_p50": pct(client, 0.5), "client_p99": pct(client, 0.99)}


def measure_wide(work, piper, n, worker_counts):
    d = os.path.join(work, "wide")
    wide(d, n)
    out = {}
    checkout = os.path.join(work, "wide-local")
    shutil.copytree(d, checkout)
    t = time.perf_counter()
    subprocess.run([piper, "exec", "all", "-j2"], cwd=checkout, check=True, **QUIET)
    out["local -j2"] = time.perf_counter() - t
    for workers in worker_counts:
        cluster = Cluster(work, workers)
        try:
            checkout = os.path.join(work, f"wide-{workers}")
            shutil.copytree(d, checkout)
            t = time.perf_counter()
            subprocess.run([piper, "exec", "all", "--disk-cache", os.path.join(work, f"disk-wide-{workers}"),
                            "--remote-exec", cluster.url, "--remote-jobs", "64"],
                           cwd=checkout, check=True, **QUIET)
            out[f"{workers} workers"] = time.perf_counter() - t
        finally:
            cluster.close()
    return out


def measure_vs_bazel(work, piper, clib):
    """Cold remote builds of the C library on a fresh cluster each."""
    out = {}
    for tool in ("piper", "bazel"):
        if tool == "bazel" and not shutil.which("bazel"):
            continue
        cluster = Cluster(work, 2)
        try:
            checkout = os.path.join(work, f"clib-{tool}")
            shutil.copytree(clib, checkout, ignore=shutil.ignore_patterns(".piper", "build", "bazel-*"))
            if tool == "piper":
                # Its compiles need a PATH there: what Bazel's genrules get.
                lua = open(os.path.join(checkout, "piper.lua")).read()
                lua = lua.replace('inputs = { c, "*.h" }, outputs = o,',
                                  'inputs = { c, "*.h" }, outputs = o, env = { PATH = "/usr/bin:/bin" },')
                lua = lua.replace('outputs = "build/liblua.a",',
                                  'outputs = "build/liblua.a", env = { PATH = "/usr/bin:/bin" },')
                open(os.path.join(checkout, "piper.lua"), "w").write(lua)
                argv = [piper, "exec", "all", "--disk-cache", os.path.join(work, "disk-clib"),
                        "--remote-exec", cluster.url, "--remote-jobs", "64"]
            else:
                root = os.path.join(work, "bazel-root")
                argv = ["bazel", f"--output_user_root={root}", "build", "//:liblua", "--jobs=66",
                        f"--remote_executor={cluster.url}", "--remote_default_exec_properties=OSFamily=linux",
                        "--remote_default_exec_properties=ISA=x86_64"]
            t = time.perf_counter()
            subprocess.run(argv, cwd=checkout, check=True, **QUIET)
            out[tool] = time.perf_counter() - t
            if tool == "bazel":
                subprocess.run(["bazel", f"--output_user_root={root}", "shutdown"], **QUIET)
        finally:
            cluster.close()
    return out


def lines(overhead, wide_times, versus):
    out = []
    if overhead:
        o = overhead
        out.append(f"- remote execution, overhead per step (a chain of {o['steps']} one-line `cp` steps, BuildGrid "
                   f"0.9.1 with the test worker, loopback): remote p50 {o['remote_p50']} ms / p99 {o['remote_p99']} ms "
                   f"per step, of which the server's queueing p50 {o['queued_p50']} ms and the worker's run "
                   f"p50 {o['ran_p50']} ms; local p50 {o['local_p50']} ms. Beyond the server's queueing and the "
                   f"local run: p50 {o['beyond_p50']} ms, p99 {o['beyond_p99']} ms (target p50 ≤ 5 ms: "
                   f"{'met' if o['beyond_p50'] <= 5 else 'missed'}); neither queueing nor the worker's run "
                   f"(piper and the RPCs of upload, Execute, result and download): p50 {o['client_p50']} ms, "
                   f"p99 {o['client_p99']} ms")
    if wide_times:
        local = wide_times["local -j2"]
        parts = [f"{name} {t:.2f} s ({t / local:.2f}×)" for name, t in wide_times.items()]
        out.append("- remote execution, a wide build (independent `cc -O2 -c` steps, workers on this same 2-core "
                   "machine): " + ", ".join(parts))
    if versus:
        parts = [f"{tool} {t:.2f} s" for tool, t in versus.items()]
        ratio = (f" (piper {versus['piper'] / versus['bazel']:.2f}× Bazel; target ≤ 1.0×: "
                 f"{'met' if versus['piper'] <= versus['bazel'] else 'missed'})") if "bazel" in versus else ""
        out.append("- remote execution, the clib-shared C library cold on a fresh cluster (2 workers), piper "
                   "against Bazel 4.2.3 `--remote_executor` with genrules of the same compiles: "
                   + ", ".join(parts) + ratio + "; Bazel's time includes starting its server")
    return out


if __name__ == "__main__":
    work_dir, piper_bin = sys.argv[1], os.path.abspath(sys.argv[2])
    scratch = tempfile.mkdtemp()
    try:
        c = Cluster(scratch, 1)
        try:
            over = measure_overhead(scratch, piper_bin, c)
        finally:
            c.close()
        wide_t = measure_wide(scratch, piper_bin, 200, [2, 4, 8])
        vs = measure_vs_bazel(scratch, piper_bin, os.path.join(work_dir, "clib-shared"))
        print(json.dumps({"overhead": over, "wide": wide_t, "bazel": vs}, indent=1))
        print("\n".join(lines(over, wide_t, vs)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
