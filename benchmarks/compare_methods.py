"""All nine SAE-TS concept tasks x all methods on the embedded model (the README's comparison).

OMP_NUM_THREADS=2 python benchmarks/compare_methods.py --budget full --seed 0 --targets effect
OMP_NUM_THREADS=2 python benchmarks/compare_methods.py --budget quick --targets all \
    --out-dir benchmarks/results/selection_quick     # every target-selection rule, ranked
python benchmarks/compare_methods.py --validate-judges   # judge checks on texts only (seconds)

``--targets`` takes one selection rule, several (comma-separated) or ``all``; with more than one,
each rule's comparison goes to ``OUT_DIR/<rule>/`` (resumable per task) and ``OUT_DIR/selection.md``
ranks the rules by the best SAE method's 9-task mean, with paired CIs against CAA.

``--validate-judges`` builds each task's behaviour judge from its judge-half texts (the same seeded
split as the comparison) and reports its AUROC on the build-half texts it never saw, its
leave-one-out AUROC on its own texts, and its scores on the hand-written probes below. The check
on generated text (agreement with independent judges) is part of the full run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from sae_ts.artifacts import write_json_atomic
from sae_ts.experiments.compare.config import SOLVED
from sae_ts.experiments.compare.run import DEFAULT_METHODS, load_task, run_comparison
from sae_ts.selection import SELECTORS

SAE_METHODS = ("sae", *SOLVED)

TASKS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "concepts" / "saets"


# Hand-written probes (sae-ts's own sentences): two on-concept and two off-concept per task.
PROBES: dict[str, tuple[list[str], list[str]]] = {
    "anger": (
        [
            "I am furious, this is outrageous and I will not stand for it!",
            "Stop lying to me, you make me so mad I could scream.",
        ],
        [
            "The garden looks lovely in the morning light.",
            "We took the train to the coast and had lunch by the sea.",
        ],
    ),
    "christian_evangelist": (
        [
            "Jesus loves you, and his grace can save your soul today.",
            "Come to church on Sunday and open your heart to the Lord.",
        ],
        [
            "The new phone has a faster chip and a better camera.",
            "Mix the flour and butter before adding the sugar.",
        ],
    ),
    "conspiracy": (
        [
            "They don't want you to know what is really in the water supply.",
            "The moon landing was staged by a secret group in the government.",
        ],
        [
            "The library opens at nine and closes at five on weekdays.",
            "Scientists published their data so others could check the results.",
        ],
    ),
    "french": (
        [
            "Bonjour, je voudrais un café et un croissant, s'il vous plaît.",
            "Nous allons à la plage demain avec nos amis.",
        ],
        [
            "I need to buy new shoes before the winter starts.",
            "The meeting was moved to Thursday afternoon.",
        ],
    ),
    "london": (
        [
            "We walked along the Thames to Tower Bridge and then took the Tube home.",
            "Big Ben and Buckingham Palace were crowded with tourists.",
        ],
        [
            "The cows grazed quietly in the field behind the farmhouse.",
            "My laptop battery died during the online exam.",
        ],
    ),
    "love": (
        [
            "I adore you with all my heart and I want to be with you forever.",
            "Her love for her children filled the whole house with warmth.",
        ],
        [
            "The invoice must be paid within thirty days.",
            "Turn left at the second traffic light and park behind the bank.",
        ],
    ),
    "praise": (
        [
            "You did a wonderful job, your work is truly outstanding!",
            "What a brilliant idea, you should be very proud of yourself.",
        ],
        [
            "The bus was late again this morning.",
            "Store the paint in a cool, dry place away from sunlight.",
        ],
    ),
    "want_to_die": (
        [
            "I don't want to be alive anymore, I just want it all to end.",
            "Every day I wish I could simply disappear and never wake up.",
        ],
        [
            "I'm looking forward to the concert next weekend.",
            "The recipe calls for two cups of rice and a pinch of salt.",
        ],
    ),
    "wedding": (
        [
            "The bride wore a white gown and the groom cried during the vows.",
            "We are sending out the invitations for our wedding reception in June.",
        ],
        [
            "The server crashed because the disk was full.",
            "He fixed the bike chain and pumped up both tyres.",
        ],
    ),
}


def validate_judges(tasks: list[Path], out: Path, seed: int = 0) -> dict:
    """AUROC of each task's judge-half behaviour judge on the held-out build half; probes."""
    from sae_ts.experiments.compare.run import split_roles
    from sae_ts.judges import EmbeddingBehaviorJudge, auroc, load_embedder

    emb = load_embedder()
    res: dict[str, dict] = {}
    for d in tasks:
        roles = split_roles(load_task(d), seed)
        j = EmbeddingBehaviorJudge(
            roles.judge.pos, roles.judge.neg, roles.judge.score_criterion, emb
        )
        on, off = PROBES.get(d.name, ([], []))
        rec: dict = {
            "auroc_build_texts": auroc(j.raw(roles.build.pos), j.raw(roles.build.neg)),
            "auroc_loo_judge_texts": j.validate()["auroc_loo"],
            "n_build": len(roles.build.pos) + len(roles.build.neg),
            "n_judge": len(roles.judge.pos) + len(roles.judge.neg),
        }
        if on:
            s_on, s_off = j.score(on), j.score(off)
            rec |= {
                "probe_on": s_on.astype(float).round(3).tolist(),
                "probe_off": s_off.astype(float).round(3).tolist(),
                "probes_ranked_right": bool(s_on.min() > s_off.max()),
            }
        res[d.name] = rec
        print(
            f"{d.name:22s} AUROC on build texts {rec['auroc_build_texts']:.3f}  LOO on judge texts "
            f"{rec['auroc_loo_judge_texts']:.3f}  on {rec.get('probe_on')}  off {rec.get('probe_off')}"
        )
    aucs = [r["auroc_build_texts"] for r in res.values()]
    print(
        f"held-out AUROC min {min(aucs):.3f}  mean {np.mean(aucs):.3f}; probes ranked right on "
        f"{sum(r.get('probes_ranked_right', False) for r in res.values())}/{len(res)} tasks"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_validation.json").write_text(json.dumps({"seed": seed, **res}, indent=2))
    return res


def _strings(obj: object) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _strings(v)]
    if isinstance(obj, list):
        return [t for v in obj for t in _strings(v)]
    return []


def redact_task_texts(path: Path, task_dirs: list[Path], min_chars: int = 20) -> int:
    """Rewrite the JSON at ``path`` with every task text replaced by a reference to it.

    The records name the texts each role used and the latents' top contexts, which come from the
    third-party task files; the committed copy must not hold them. Each string that contains a
    prose text of ``act_steer.json`` or ``criteria.json`` of at least ``min_chars`` characters, or
    is a shorter one, becomes ``"[<task>/<file> text sha256:<12 hex>]"``, so a reader with the
    files can still match it; identifiers such as a hook name are kept. The full records stay in
    the run's ignored ``tasks/`` checkpoints. Returns the number of strings replaced.
    """
    texts: dict[str, str] = {}
    for d in task_dirs:
        for name in ("act_steer.json", "criteria.json"):
            for t in _strings(json.loads((d / name).read_text())):
                if not any(c.isspace() for c in t.strip()):
                    continue  # an identifier (a hook name, a task name), not a text
                digest = hashlib.sha256(t.encode()).hexdigest()[:12]
                texts[t.strip()] = f"[{d.name}/{name} text sha256:{digest}]"
    n = 0

    def walk(o: object) -> object:
        nonlocal n
        if isinstance(o, str):
            hit = texts.get(o.strip()) or next(
                (ref for t, ref in texts.items() if len(t) >= min_chars and t in o), None
            )
            n += hit is not None
            return hit or o
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    doc = walk(json.loads(path.read_text()))
    write_json_atomic(path, doc)
    return n


def selection_table(docs: dict[str, dict]) -> tuple[str, dict]:
    """Rank target-selection rules: per rule, each method's 9-task mean score [CI], its paired
    difference from CAA [CI] and AxBench's harmonic mean; the rule's best SAE method first."""
    rows, summary = [], {}
    for rule, doc in docs.items():
        mean = doc["mean"]
        sae = [m for m in SAE_METHODS if m in mean]
        best = max(sae, key=lambda m: mean[m]["score"]) if sae else None
        summary[rule] = {"best_sae_method": best, "mean": mean}
        for m in [k for k in mean if k != "caa"] + ["caa"]:
            r = mean[m]
            vs = r.get("vs_caa")
            diff = (
                "" if vs is None else f"{vs['diff']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}]"
            )
            star = " ←best SAE" if m == best else ""
            rows.append(
                f"| {rule} | {m}{star} | {r['score']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                f"{diff} | {r.get('harmonic', float('nan')):.3f} |"
            )
    head = (
        "| targets | method | 9-task mean score [95% CI] | − CAA (paired) [95% CI] | harmonic |\n"
        "|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows), summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks-dir", default=str(TASKS))
    ap.add_argument("--budget", choices=["smoke", "quick", "full"], default="full")
    ap.add_argument("--model", default="smollm2-135m", help="an embedded model (its shipped SAE)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--effect-model", default="default")
    ap.add_argument("--out-dir", default="benchmarks/results/compare_full")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--targets", default="fgaa", help=f"one or more of {SELECTORS}, or all")
    ap.add_argument("--validate-judges", action="store_true", help="only validate the judge")
    ap.add_argument(
        "--no-validation", action="store_true", help="skip the judge checks on generated text"
    )
    args = ap.parse_args(argv)
    tasks = sorted(p for p in Path(args.tasks_dir).iterdir() if (p / "act_steer.json").exists())
    if not tasks:
        sys.exit(f"no tasks under {args.tasks_dir}")
    print("command:", " ".join(["python", *sys.argv]))
    if args.validate_judges:
        validate_judges(tasks, Path(args.out_dir), args.seed)
        return
    rules = list(SELECTORS) if args.targets == "all" else args.targets.split(",")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    docs = {}
    for rule in rules:
        out = Path(args.out_dir) if len(rules) == 1 else Path(args.out_dir) / rule
        doc = run_comparison(
            tasks, methods, args.budget, args.seed, args.effect_model, out, out / "results.json",
            log=lambda msg, r=rule: print(f"[{r}] {msg}", flush=True), targets=rule,
            validate=not args.no_validation, model_name=args.model,
        )  # fmt: skip
        n = redact_task_texts(out / "results.json", tasks)
        # the task checkpoints too: redacted, they still resume (their keys come from the texts)
        # and can be committed, so a fresh clone resumes the run
        n += sum(redact_task_texts(p, tasks) for p in sorted((out / "tasks").glob("*.json")))
        print(f"{n} task texts replaced by references in results.json and tasks/")
        print(doc["table"], doc["differences"], sep="\n\n")
        print(f"{doc['config']['seconds']:.0f} s, {doc['config']['tokens_generated']} tokens")
        docs[rule] = doc
    if len(rules) > 1:
        table, summary = selection_table(docs)
        head = f"command: python {' '.join(sys.argv)} (seed {args.seed}, budget {args.budget})"
        Path(args.out_dir, "selection.md").write_text(head + "\n\n" + table + "\n")
        write_json_atomic(Path(args.out_dir) / "selection.json", summary)
        print(table)


if __name__ == "__main__":
    main()
