"""`workbench steer`: baseline and steered continuations of a prompt, from one call.

    workbench steer --model smollm2-135m --sae batchtopk-l15-8k --feature 190 --coef 2 \\
        --prompt "From my experience," --max-new-tokens 32 [--positions all|from:P|generated] [--json]

--sae is a registered SAE name of the model or an SAE folder. Features are added along
their decoder directions (--coef per feature, in typical-norm units unless --units raw);
--clamp I=V and --ablate I edit feature activations keeping the SAE error; --vector FILE
adds a vector from a .safetensors/.npy file at --site. With --json the last line is one
JSON object with `baseline` and `steered` (texts) and the details.
"""

from __future__ import annotations

import argparse

from workbench.cli.common import add_json_flag, emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "steer", help="generate baseline and steered continuations (SAE features or vectors)",
        description="Steer a model with SAE features or vectors while it generates; prints the baseline and the "
                    "steered continuation from the same seed.")
    parser.add_argument("--model", required=True, help="model name, HF repo id or local folder")
    parser.add_argument("--prompt", required=True, help="the prompt to continue")
    parser.add_argument("--sae", default=None, help="registered SAE name of the model, or an SAE folder")
    parser.add_argument("--feature", type=int, nargs="+", default=[], metavar="I",
                        help="feature index(es) whose decoder directions are added")
    parser.add_argument("--coef", type=float, nargs="+", default=[], metavar="C",
                        help="coefficient per feature (one value applies to all); default 1")
    parser.add_argument("--units", choices=["norm", "raw"], default="norm",
                        help="coefficient units: 'norm' = typical token norms at the site (default), 'raw'")
    parser.add_argument("--clamp", nargs="+", default=[], metavar="I=V", help="clamp feature I to activation V")
    parser.add_argument("--ablate", type=int, nargs="+", default=[], metavar="I", help="zero-ablate features")
    parser.add_argument("--vector", default=None, help="add a vector from a .safetensors or .npy file")
    parser.add_argument("--vector-coef", type=float, default=1.0, help="coefficient of --vector (default 1)")
    parser.add_argument("--site", default=None, help="site of --vector (e.g. blocks.15.hook_resid_post)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--positions", default="all",
                        help="where edits apply: all (prompt and every new token), from:P (positions >= P; "
                             "negative from the prompt's end), generated (new tokens only). Default all")
    parser.add_argument("--seed", type=int, default=0, help="seed (used when sampling)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    parser.add_argument("--dtype", default=None, help="model dtype (float32, bfloat16)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def _interventions(args: argparse.Namespace, model) -> tuple[list, str | None]:
    from workbench.errors import WorkbenchError
    from workbench.steering.interventions import AblateFeatures, AddFeature, AddVector, ClampFeature
    from workbench.steering.resolve import resolve_sae
    from workbench.steering.vectors import load_vector

    items: list = []
    sae_name = None
    if args.feature or args.clamp or args.ablate:
        if not args.sae:
            raise WorkbenchError("--feature/--clamp/--ablate need --sae (a registered SAE name or an SAE folder)")
    if args.sae:
        entry, sae = resolve_sae(model, args.sae)
        sae_name = entry.name if entry is not None else str(args.sae)
        coefs = args.coef or [1.0]
        if len(coefs) not in (1, len(args.feature)):
            raise WorkbenchError(f"{len(args.feature)} features but {len(coefs)} coefficients; give one per feature "
                                 "or one for all")
        if len(coefs) == 1:
            coefs = coefs * len(args.feature)
        items += [AddFeature(sae, f, c, units=args.units) for f, c in zip(args.feature, coefs)]
        for spec in args.clamp:
            index, sep, value = spec.partition("=")
            try:
                items.append(ClampFeature(sae, int(index), float(value)))
            except ValueError:
                raise WorkbenchError(f"cannot read --clamp {spec!r}; write FEATURE=VALUE, e.g. 190=8") from None
        if args.ablate:
            items.append(AblateFeatures(sae, args.ablate))
    if args.vector:
        if not args.site:
            raise WorkbenchError("--vector needs --site (where to add it)")
        site = model.check_site(args.site)
        vector = load_vector(args.vector, width=model.site_width(site))
        items.append(AddVector(site, vector, args.vector_coef, units=args.units, label=f"vector {args.vector}"))
    if not items:
        raise WorkbenchError("nothing to steer with: give --sae with --feature (or --clamp/--ablate), or --vector")
    return items, sae_name


def run(args: argparse.Namespace) -> int:
    from workbench.engine.registry import load_model
    from workbench.steering.continuations import steer

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    interventions, sae_name = _interventions(args, model)
    result = steer(model, args.prompt, interventions, max_new_tokens=args.max_new_tokens, positions=args.positions,
                   seed=args.seed, do_sample=args.sample, temperature=args.temperature)
    payload = {"model": model.name, "sae": sae_name, **result.to_dict()}
    text = (f"prompt:   {args.prompt}\n"
            f"baseline: {result.baseline[0]}\n"
            f"steered:  {result.steered[0]}\n"
            f"({'; '.join(result.interventions)}; positions {result.positions}; "
            f"{sum(result.steered_changed[0])} of {len(result.steered_tokens[0])} tokens changed; "
            f"{result.seconds:.1f} s)")
    emit(args, payload, text)
    return 0
