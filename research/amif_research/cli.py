"""The research subcommands of `amif` (train, average, evaluate, attack), added to its parser through
the `amif.commands` entry point when amif-research is installed."""

from __future__ import annotations

from amif.errors import AMIFError
from amif.package import package_paths


def cmd_train(args) -> None:
    """`amif train`: the recipe's settings (--recipe FILE; else the defaults), each replaced by its flag where the
    command line gives one; --twin or the recipe's `twin = true` trains the unprotected twin."""
    from .train import TrainConfig, flat_names, read_recipe, train

    cfg, extra = read_recipe(args.recipe) if args.recipe else (TrainConfig(), {})
    cfg = cfg.override(**{k: getattr(args, k) for k in flat_names() if getattr(args, k, None) is not None})
    twin = args.twin or extra.get("twin", False)
    if not twin and not (args.key and args.identifier):
        raise AMIFError("amif train needs --key and --identifier (or --twin for the unprotected twin).")
    train(
        args.key,
        args.output,
        args.identifier,
        data_dir=args.data,
        checkpoint_dir=args.checkpoints,
        init=args.init,
        cfg=cfg,
        twin=twin,
        anchor=args.anchor,
    )


def cmd_average(args) -> None:
    from .averaging import average_packages

    print(f"wrote {average_packages(args.packages, args.output)}")


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate

    out = evaluate(
        args.model or [None],
        args.data,
        args.split,
        args.key or [],
        args.twin or [],
        args.output,
        args.limit,
        not args.quiet,
        not args.no_figures,
    )
    print(f"wrote {out}, {out.with_suffix('.json').name}" + ("" if args.no_figures else f" and {out.stem}-figures/"))


def cmd_attack(args) -> None:
    from .attack import AttackOptions
    from .attack_suite import attack

    opts = AttackOptions(**{f: getattr(args, f) for f in AttackOptions.__dataclass_fields__})
    out = attack(
        args.model,
        args.key,
        args.data,
        args.split,
        args.limit,
        args.attacks,
        args.output,
        opts,
        args.figures or args.figures_on_sample,
        not args.quiet,
        args.figures_on_sample,
    )
    print(f"wrote {out}, {out.with_suffix('.json').name}" + (f" and {out.stem}-figures/" if args.figures else ""))


def register(sub) -> None:
    """Add train, average, evaluate and attack to `amif`'s subparsers."""
    from .attack import AttackOptions
    from .attack_suite import ATTACKS

    s = sub.add_parser(
        "train",
        help="train a model under an owner's key",
        description="Settings come from --recipe FILE (TOML, e.g. research/recipes/twin.toml), "
        "else from their defaults; a flag given here replaces the recipe's value.",
    )
    s.add_argument(
        "--recipe",
        metavar="FILE",
        help="TOML recipe of training settings (research/recipes/); flags given here override it",
    )
    s.add_argument("--key", help="the owner's .amifkey")
    s.add_argument("--identifier", help='e.g. "MY LAB · UNLICENSED"')
    s.add_argument("--twin", action="store_true", help="train the unprotected twin (no key, no identifier)")
    s.add_argument("-o", "--output", required=True, help="model package path (NAME)")
    s.add_argument("--data", help="folder of registered pairs (default ../shared/data/harvard)")
    s.add_argument("--checkpoints", default="checkpoints")
    s.add_argument("--init", help="start from this model package")
    s.add_argument("--steps", type=int, default=None, help="train until this step (default 20000)")
    s.add_argument("--batch", type=int, default=None, help="crops per step (default 8)")
    s.add_argument("--crop", type=int, default=None, help="crop size in pixels (default 128)")
    s.add_argument("--seed", type=int, default=None, help="(default 0)")
    s.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default 250)")
    s.add_argument(
        "--vif-weight",
        type=float,
        default=None,
        help="weight of the VIF (information fidelity) term in the fusion loss",
    )
    s.add_argument(
        "--sd-weight",
        type=float,
        default=None,
        help="weight of the SD (contrast) hinge against the max rule in the fusion loss",
    )
    s.add_argument(
        "--sf-weight",
        type=float,
        default=None,
        help="weight of the SF (spatial frequency) hinge against the max rule in the fusion loss",
    )
    s.add_argument(
        "--sf-floor",
        type=float,
        default=None,
        help="the SF hinge's floor as a multiple of the max rule's SF (default 1.01)",
    )
    s.add_argument(
        "--scd-weight", type=float, default=None, help="weight of the SCD hinge against the max rule in the fusion loss"
    )
    s.add_argument(
        "--mi-weight",
        type=float,
        default=None,
        help="weight of the MI (mutual information over 256 grey levels) hinge against the max rule in the fusion loss",
    )
    s.add_argument(
        "--lr-anneal",
        type=int,
        default=None,
        metavar="N",
        help="cosine-anneal the learning rates to 1%% over the last N of --steps (default 0: constant)",
    )
    s.add_argument(
        "--forge-pool",
        type=int,
        default=None,
        metavar="N",
        help="forgers among each step's --batch wrong-key codes (default 2; 0 turns the forgers off)",
    )
    s.add_argument(
        "--forge-restart",
        type=float,
        default=None,
        metavar="P",
        help="per-step chance that a forger of the training pool restarts from a random code (default "
        "0.005, a mean life of 200 steps; higher keeps the forgers in their first steps)",
    )
    s.add_argument(
        "--forge-repeat",
        type=int,
        default=None,
        metavar="N",
        help="research switch (measured, never shipped): Adam steps each training forger takes per "
        "training step, on that step's crops with the weights frozen (default 1)",
    )
    s.add_argument(
        "--forge-memory",
        type=int,
        default=None,
        metavar="N",
        help="N of each step's --batch wrong-key codes are drawn from the training forgers' past codes (one "
        "kept per forger every 10 of its Adam steps, the last 512), so training keeps marking where "
        "earlier forgers went (default 0)",
    )
    s.add_argument(
        "--forge-detector",
        type=float,
        default=None,
        metavar="W",
        help="research switch (measured, never shipped): every second training forger also descends "
        "W x verify's score, as the second variant of `amif attack` forging does (default 0)",
    )
    s.add_argument(
        "--forge-untraced",
        action="store_true",
        default=None,
        help="research switch (measured, never shipped): with --trace-strength, the training "
        "forgers' target is the identifier without the texture (default: texture too)",
    )
    s.add_argument(
        "--partial-keys",
        type=float,
        default=None,
        metavar="P",
        help="chance that a sampled wrong-key code is replaced by a partial key: a key embedding part of "
        "the way to the key's (measured: white-box forgers delayed, not stopped; default 0: none)",
    )
    s.add_argument(
        "--decoy-alpha",
        type=float,
        default=None,
        metavar="A",
        help="the identifier's opacity in outputs of wrong codes whose key embedding points away from the "
        "key's (cosine -0.5 and below; --mark-alpha from cosine 0 up): a lighter mark there, so a "
        "forger's descent of the fusion loss ends there, still flagged (default 0: off)",
    )
    s.add_argument(
        "--decoys",
        type=float,
        default=None,
        metavar="P",
        help="with --decoy-alpha: chance that a sampled wrong-key code is moved part of the way to the "
        "opposite of the key's embedding, so the lighter mark is learned there (default 0: none)",
    )
    s.add_argument(
        "--anchor-weight",
        type=float,
        default=None,
        metavar="W",
        help="with --init or --anchor: weight of the L1 distance of keyed outputs to the --init "
        "package's keyed outputs on the same crops, so that authorized quality stays where it was "
        "(default 0: off)",
    )
    s.add_argument(
        "--anchor",
        metavar="PACKAGE",
        help="with --anchor-weight: hold the keyed outputs near this package's outputs instead: an "
        "unprotected twin (under the zero code) or a package of the key's model (default: --init)",
    )
    s.add_argument(
        "--mark-alpha",
        type=float,
        default=None,
        metavar="A",
        help="the identifier's opacity in unkeyed outputs, in (0, 1] (default 0.75; 1 leaves no content "
        "under the strokes for a remover to recover)",
    )
    s.add_argument(
        "--mark-shift",
        type=int,
        default=None,
        metavar="PX",
        help="research switch (measured, never shipped): unkeyed outputs also move their content "
        "PX pixels right and down, a second identifier channel (default 0: off)",
    )
    s.add_argument(
        "--trace-strength",
        type=float,
        default=None,
        metavar="S",
        help="unkeyed outputs also carry a secret texture of this std drawn from the key (0 to 0.25; "
        "e.g. 0.06), which students distilled from them inherit and the key's holder can find "
        "(default 0: off)",
    )
    s.add_argument(
        "--public-strength",
        type=float,
        default=None,
        metavar="S",
        help="unkeyed outputs also carry the model's public texture of this std (0 to 0.25; needs "
        "--dihedral), which `verify --sources` finds without the key (default 0: off)",
    )
    s.add_argument(
        "--dihedral",
        action="store_true",
        default=None,
        help="the textures follow the anatomy under flips and 90-degree turns, and training crops are "
        "turned as well as flipped (default: off)",
    )
    s.add_argument(
        "--widen-decoder",
        type=int,
        default=None,
        metavar="K",
        help="with --init: train on with K times the package's decoder channels, starting from the same "
        "function (default 1: as it is)",
    )
    s.add_argument(
        "--detail",
        type=float,
        default=None,
        metavar="G",
        help="the first image's fine detail, times G, added to the intensity target where the second image "
        "dominates (0 to 2; default 0: the max rule)",
    )
    s.add_argument(
        "--detail-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight of matching the first image's fine detail (times --detail, else 1) where the second "
        "dominates (default 0: off)",
    )
    s.add_argument(
        "--overshoot-weight",
        type=float,
        default=None,
        metavar="W",
        help="hinge on outputs brighter than both sources (default 0: off)",
    )
    s.add_argument(
        "--undershoot-weight",
        type=float,
        default=None,
        metavar="W",
        help="hinge on outputs darker than both sources (default 0: off)",
    )
    s.add_argument(
        "--headroom",
        type=float,
        default=None,
        metavar="PX",
        help="with --detail, lower the target's base smoothly (blur sigma PX) where its detail would pass the "
        "ceiling, so the detail is kept below white (default 0: off)",
    )
    s.add_argument(
        "--ceiling",
        choices=("white", "max"),
        default=None,
        help="what --headroom lowers the base under: white, or the brighter source (default white)",
    )
    s.add_argument(
        "--bright-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight of the target match where the second image dominates near white (CT's bone; default 0: off)",
    )
    s.add_argument(
        "--base-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight of the output's base (less its fine detail) matched to the target's (default 0: off)",
    )
    s.add_argument(
        "--edge-zoom",
        type=float,
        default=None,
        metavar="P",
        help="share of crops taken from slices zoomed 1.2 to --zoom-max times, so tissue reaches the slice's "
        "rim (default 0: none)",
    )
    s.add_argument("--zoom-max", type=float, default=None, help="largest zoom of --edge-zoom crops (default 1.6)")
    s.add_argument(
        "--empty-second",
        type=float,
        default=None,
        metavar="P",
        help="share of crops whose second image is empty (default 0: none)",
    )
    s.add_argument("--minutes", type=float, default=None, help="stop with a checkpoint after this wall time")
    s.add_argument("--device", default=None, help="torch device, e.g. cuda")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("average", help="mean of the weights of several checkpoints of one model, as a new package")
    s.add_argument("packages", nargs="+", help="model packages (checkpoints of one training run)")
    s.add_argument("-o", "--output", required=True, help="model package path (NAME)")
    s.set_defaults(func=cmd_average, outputs=lambda args: [package_paths(args.output)[0]])

    s = sub.add_parser("evaluate", help="fusion metrics of models, twins and baselines on registered pairs")
    s.add_argument("-m", "--model", action="append", help="model package (repeatable; default: the bundled one)")
    s.add_argument("-k", "--key", action="append", help="owner's key of a model (repeatable)")
    s.add_argument("--twin", action="append", help="unprotected twin package (repeatable, one per seed)")
    s.add_argument("--data", help="folder of registered pairs (default ../shared/data/harvard)")
    s.add_argument("--split", default="test")
    s.add_argument("--limit", type=int, help="at most N pairs per pair type")
    s.add_argument("-o", "--output", default="amif-eval.md", help="Markdown report (figures in a folder beside it)")
    s.add_argument(
        "--no-figures",
        action="store_true",
        help="tables only, no example images (to publish results on data whose images may not be shared)",
    )
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    d = AttackOptions()
    s = sub.add_parser("attack", help="attack a model package's protection on registered pairs (Markdown report)")
    s.add_argument("-m", "--model", help="model package (default: the bundled one)")
    s.add_argument("-k", "--key", help="the owner's key, for the keyed reference (default: the bundled model's)")
    s.add_argument("--data", help="folder of registered pairs (default ../shared/data/harvard)")
    s.add_argument("--split", default="test")
    s.add_argument("--limit", type=int, help="at most N pairs per pair type")
    s.add_argument("--attacks", help=f"comma-separated, from: {','.join(ATTACKS)} (default: all)")
    s.add_argument("-o", "--output", default="amif-attack.md", help="Markdown report (+ .json beside it)")
    s.add_argument("--figures", action="store_true", help="write example figures to a folder beside the report")
    s.add_argument(
        "--figures-on-sample",
        action="store_true",
        help="figures show the bundled sample through each attack, not the attacked pairs (implies --figures)",
    )
    for flag, helptext in (
        ("--random-codes", "random +-1 codes"),
        ("--near-miss-codes", "the owner's code with bits flipped"),
        ("--near-miss-max-bits", "near-miss code i flips 1 + (i mod this) bits"),
        ("--foreign-codes", "codes of keys for other model ids"),
        ("--code-batch", "codes per decoder batch"),
        ("--quality-db", "keyed quality: PSNR to the keyed output in dB"),
        ("--forge-steps", "Adam steps per forging restart"),
        ("--forge-restarts", "forging restarts per objective"),
        ("--forge-images", "pairs the forger optimizes on"),
        ("--forge-lr", "forging learning rate"),
        ("--forge-detector", "weight of the detector score in the second forging objective (0: fusion loss only)"),
        ("--forge-detector-only", "forge with the detector-term objective only, not the plain fusion loss as well"),
        ("--learn-images", "attacker's pairs (train split) for the remover and fine-tuning: counts or 'all'"),
        ("--learn-steps", "Adam steps of each remover, student and fine-tuning run"),
        ("--learn-batch", "batch of the learned attacks"),
        ("--learn-crop", "crop size of the learned attacks"),
        ("--learn-lr", "learning rate of the learned attacks"),
        ("--input-queries", "queries per image of the input-transform attacks, 2 to 8, comma-separated"),
        ("--seed", "random seed of the codes, edits and restarts"),
    ):
        default = getattr(d, flag[2:].replace("-", "_"))
        if isinstance(default, bool):  # a switch, as `amif.attack.command_line` writes it
            s.add_argument(flag, action="store_true", help=helptext)
        else:
            s.add_argument(flag, type=type(default), default=default, help=f"{helptext} (default %(default)s)")
    s.add_argument("--device", default=d.device, help="torch device, e.g. cuda")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_attack)
