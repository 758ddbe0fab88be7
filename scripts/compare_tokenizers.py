#!/usr/bin/env python3
"""consa-tokenize against Hugging Face tokenizers on a real corpus: identical ids, and speed.

The corpus is this machine's Python standard library (every .py file that is valid UTF-8, up to
--max-mb), one document per file. For each tokenizer directory given:
  parity  consa tokenize --whole-file writes a shard; every document's ids must equal
          [BOS if the tokenizer adds one] + tokenizers' encode(text) + [EOS]
  speed   MB/s of consa-tokenize --bench and of tokenizers' encode_batch on the same documents
          (one per line of the corpus), at 1 thread and at every thread, medians of 3 runs
Prints a JSON report (and writes it to --out).

Usage (needs `tokenizers`; the GPU machine has it):
    python3 scripts/compare_tokenizers.py --consa build/consa-tokenize --out report.json DIR...
"""
import argparse
import glob
import json
import os
import statistics
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time


def read_shard(path):
    """consa's token shard (version 1 or 2): the ids and the document starts."""
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == b"CONSATOK", path
    version, width, count = struct.unpack_from("<IIQ", data, 8)
    header = 24 if version == 1 else 32
    docs = 1 if version == 1 else struct.unpack_from("<Q", data, 24)[0]
    fmt = {2: "H", 4: "I"}[width]
    ids = list(struct.unpack_from(f"<{count}{fmt}", data, header))
    starts = [0, count] if version == 1 else list(struct.unpack_from(f"<{docs + 1}Q", data, header + count * width))
    return ids, starts


def hf_speed(tokenizer_dir, lines_file, threads, repeats=3):
    """tokenizers' encode_batch MB/s in a process of its own (the thread pool is fixed at start)."""
    env = dict(os.environ)
    env["TOKENIZERS_PARALLELISM"] = "false" if threads == 1 else "true"
    env["RAYON_NUM_THREADS"] = str(threads)
    env["RAYON_RS_NUM_CPUS"] = str(threads)
    code = f"""
import json, time, statistics
from tokenizers import Tokenizer
tok = Tokenizer.from_file({os.path.join(tokenizer_dir, 'tokenizer.json')!r})
with open({lines_file!r}, 'rb') as fh:
    docs = [l.rstrip(b'\\r').decode('utf-8') for l in fh.read().split(b'\\n') if l.rstrip(b'\\r')]
size = sum(len(d.encode('utf-8')) for d in docs)
times = []
for _ in range({repeats}):
    t = time.perf_counter(); enc = tok.encode_batch(docs, add_special_tokens=False); times.append(time.perf_counter() - t)
print(json.dumps({{"bytes": size, "seconds": statistics.median(times), "tokens": sum(len(e.ids) for e in enc)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    r["mb_per_s"] = r["bytes"] / r["seconds"] / 1e6
    return r


def consa_speed(consa, tokenizer_dir, lines_file, threads):
    out = subprocess.run([consa, "--tokenizer", tokenizer_dir, "--input", lines_file, "--format", "lines", "--bench",
                          "--threads", str(threads), "--repeats", "3"], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--consa", required=True, help="the consa-tokenize program")
    ap.add_argument("--out", help="write the JSON report here")
    ap.add_argument("--max-mb", type=float, default=24)
    ap.add_argument("tokenizers", nargs="+", help="tokenizer directories (tokenizer.json, tokenizer_config.json)")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    work = tempfile.mkdtemp(prefix="consa-tokenizers-")
    corpus = os.path.join(work, "docs")
    os.makedirs(corpus)
    texts, total = [], 0
    for f in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True)):
        try:
            raw = open(f, "rb").read()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text:
            continue
        with open(os.path.join(corpus, f"{len(texts):06d}.py"), "wb") as fh:
            fh.write(raw)
        texts.append(text)
        total += len(raw)
        if total > args.max_mb * 1e6:
            break
    lines_file = os.path.join(work, "lines.txt")
    with open(lines_file, "wb") as fh:
        fh.write("\n".join(texts).encode("utf-8"))
    threads_all = os.cpu_count()
    report = {"documents": len(texts), "bytes": total, "cpus": threads_all, "tokenizers": {}}
    for d in args.tokenizers:
        name = os.path.basename(os.path.normpath(d))
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        shard = os.path.join(work, name + ".tok")
        subprocess.run([args.consa, "--tokenizer", d, "--input", os.path.join(corpus, "*.py"), "--whole-file",
                        "--output", shard], check=True, capture_output=True, text=True)
        ids, starts = read_shard(shard)
        config = json.load(open(os.path.join(d, "tokenizer_config.json")))
        bos = tok.token_to_id(config["bos_token"]) if config.get("bos_token") else None
        eos = tok.token_to_id(config["eos_token"]) if config.get("eos_token") else None
        mismatches, first = 0, None
        assert len(starts) - 1 == len(texts), (len(starts), len(texts))
        for i, text in enumerate(texts):
            want = ([bos] if bos is not None else []) + tok.encode(text, add_special_tokens=False).ids + \
                   ([eos] if eos is not None else [])
            got = ids[starts[i]:starts[i + 1]]
            if got != want:
                mismatches += 1
                if first is None:
                    k = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                    first = {"document": i, "position": k, "consa": got[k:k + 8], "hf": want[k:k + 8]}
        entry = {"documents": len(texts), "ids": len(ids), "mismatched_documents": mismatches, "first_mismatch": first,
                 "speed": {}}
        for threads in (1, threads_all):
            c = consa_speed(args.consa, d, lines_file, threads)
            h = hf_speed(d, lines_file, threads)
            entry["speed"][str(threads)] = {"consa_mb_per_s": c["mb_per_s"], "hf_mb_per_s": h["mb_per_s"],
                                            "ratio": c["mb_per_s"] / h["mb_per_s"], "consa_tokens": c["tokens"],
                                            "hf_tokens": h["tokens"]}
        report["tokenizers"][name] = entry
        print(json.dumps({name: entry}), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
