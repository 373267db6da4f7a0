#!/usr/bin/env python3
"""One row of bench/run.sh's embedding tables: tokenfab's and the reference's best
sentences/s over the rounds (`OUT/tf-NAME-R.json` and `OUT/REF-NAME-R.json`, as `tokenfab
bench embed`, bench/st_reference.py and bench/embed_http.py print them) and their ratio,
with the token count of tokenfab's first round in the figure's text (`{tokens}`).

    bench/embed_row.py OUT ROUNDS NAME REF REF_LABEL FIGURE
"""
import json
import os
import sys


def main():
    out, rounds, name, ref, label, figure = sys.argv[1:7]

    def best(side):
        return max(json.load(open(os.path.join(out, f"{side}-{name}-{r}.json")))["sentences_per_s"]
                   for r in range(1, int(rounds) + 1))

    tf, other = best("tf"), best(ref)
    tokens = json.load(open(os.path.join(out, f"tf-{name}-1.json")))["tokens"]
    print(f"| figure | tokenfab | {label} | ratio |")
    print("|---|---|---|---|")
    print(f"| {figure.format(tokens=tokens)} | {tf:.1f} | {other:.1f} | {tf / other:.2f} |")


if __name__ == "__main__":
    main()
