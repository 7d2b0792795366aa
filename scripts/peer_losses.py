"""The loss every peer computes on the same inputs and weights as vqbench's softmax: a markdown table.

    python scripts/peer_losses.py > results/peer-losses.md          # V=50257, d=1024, N=2048, float32
    python scripts/peer_losses.py --vocab 500 --d-model 16 --tokens 8   # small, for a check

Each peer gets the softmax head's weight and the sweep's inputs (vqbench.measuring.sweep.make_inputs); a peer
whose package or device is missing is listed with the reason.
"""

import argparse
import sys

import torch
from tabulate import tabulate

from vqbench.measuring.provenance import cpu_model, git_commit
from vqbench.heads.registry import make_head
from vqbench.measuring.sweep import make_inputs

PEERS = ["peer:impl=torch-lce", "peer:impl=torch-lce,chunked=1", "peer:impl=compile", "peer:impl=cce",
         "peer:impl=liger"]


def losses(vocab: int, d: int, n: int):
    torch.manual_seed(0)
    softmax = make_head("softmax", vocab, d)
    hidden, target = make_inputs(vocab, d, n, "cpu", torch.float32)
    with torch.no_grad():
        reference = float(softmax.loss(hidden, target))
        rows = [["softmax", f"{reference:.6f}", "", ""]]
        for spec in PEERS:
            try:
                peer = make_head(spec, vocab, d)
                peer.weight.copy_(softmax.weight)
                value = float(peer.loss(hidden, target))
                rows.append([spec, f"{value:.6f}", f"{abs(value - reference):.1e}", ""])
            except NotImplementedError as error:
                rows.append([spec, "", "", f"not run: {error}"])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=2048)
    args = p.parse_args(argv)
    rows = losses(args.vocab, args.d_model, args.tokens)
    print(f"# Peers' losses against vqbench's softmax\n\n`python scripts/peer_losses.py --vocab {args.vocab} "
          f"--d-model {args.d_model} --tokens {args.tokens}` (float32, CPU {cpu_model()}, torch "
          f"{torch.__version__}, vqbench {git_commit()}): the mean loss in nats on the same hidden states, "
          f"targets and weights.\n")
    print(tabulate(rows, headers=["head", "loss (nats)", "difference from softmax", "note"], tablefmt="github",
                   disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
