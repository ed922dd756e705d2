"""Time vmf_log_normalizer ('exact' vs 'debye') on K prototypes: forward+backward (student side)
and forward only (teacher side, no grad).

    python benchmarks/bench_vmf_normalizer.py [--num-prototypes 65536] [--dim 256]
        [--device cpu] [--threads 2] [--repeats 50]

Prints the median time of each variant and the exact/debye ratio measured in the same run
(interleaved rounds, so background load hits both alike).
"""
import argparse
import statistics
import time

import torch

from mmselfsup_vmf.models.losses.vmf import vmf_log_normalizer


def _median_ms(fns, repeats: int, device: torch.device):
    """Median wall time (ms) of each function; the functions are interleaved in every round so
    that load from other processes affects all of them alike."""
    for fn in fns:  # warm-up (caches, allocator, CUDA context)
        for _ in range(3):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times):
            if device.type == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == 'cuda':
                torch.cuda.synchronize()
            fn_times.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-prototypes', type=int, default=65536)
    parser.add_argument('--dim', type=int, default=256)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # kappa = ||w|| / tau_s with tau_s = 0.1 and prototype norms spread around 1.
    generator = torch.Generator().manual_seed(0)
    norms = torch.rand(args.num_prototypes, generator=generator) * 4 + 0.05
    kappa = (norms / 0.1).to(device=device, dtype=torch.float32).requires_grad_(True)

    def forward_backward(approximation):
        def run():
            kappa.grad = None
            vmf_log_normalizer(kappa, args.dim, approximation).sum().backward()
        return run

    def forward_only(approximation):
        def run():
            with torch.no_grad():
                vmf_log_normalizer(kappa, args.dim, approximation)
        return run

    print(f'K={args.num_prototypes} p={args.dim} float32 input, device={device}, '
          f'threads={torch.get_num_threads()}, median of {args.repeats}')
    for label, make in (('forward+backward', forward_backward), ('forward only', forward_only)):
        exact, debye = _median_ms([make('exact'), make('debye')], args.repeats, device)
        print(f'{label:>17}: exact {exact:7.3f} ms   debye {debye:7.3f} ms   '
              f'ratio exact/debye {exact / debye:5.2f}')


if __name__ == '__main__':
    main()
