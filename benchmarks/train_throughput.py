"""Stage-2 training throughput and MFU of the LLaVA v1 model, on random weights with a real backbone's shapes.

    .venv/bin/python benchmarks/train_throughput.py --backbone-shape llama2-7b --mode lora ft --grad-checkpointing
    .venv/bin/python benchmarks/train_throughput.py --backbone-shape tiny --seq-len 512 --steps 5 --warmup 2   # CPU smoke
    .venv/bin/python benchmarks/train_throughput.py --backbone-shape smollm2 --batch-size 8 --seq-len 384 --steps 3 --warmup 1
        # on a CPU: fp32 against bf16 autocast, side by side, with the ratio

The model is `SightLlava` (CLIP ViT-L/14 at 224 px -> 256 image tokens from the second-to-last layer, `linear`
projector, LLaMA-family LLM; `smollm2`: SmolLM2-135M's shape with the embedded ShapesWorld CLIP, 4 image tokens) built
from configs written here, straight on the device: nothing is downloaded. Precision (`--precision`): `bf16` (pure
bf16 weights, below; the GPU default), `fp32`, or `bf16-autocast` (fp32 weights and optimizer, matmuls under bf16
autocast: the Trainer's `bf16=True`, what stage 1 and 2 run on a CPU with AVX512-BF16/AMX); on a CPU the default runs
`fp32` and `bf16-autocast` one after the other on the same batch and prints their ratio.
A step is forward + backward + fused AdamW step on one fixed batch (data loading is not what is measured) of
`[BOS, 256 x <image>, text]` sequences of `--seq-len` tokens; BOS, image and the first quarter of the text (the
"instruction") are masked from the loss, as stage 2 does. `ft`: LLM + projector train, CLIP frozen. `lora`: PEFT
LoRA r=64, alpha=16, dropout 0.05 on the LLM's q,k,v,o,gate,up,down (the regex stage 2 uses), projector trains fully.

Memory strategy: pure bf16. Weights, gradients and both AdamW moments are bf16, 8 bytes per trainable parameter
(~54 GB for the 7B in `ft`), so that full fine-tuning of the 7B shape can fit one 80 GB H100 with
`--grad-checkpointing` (expected, not yet verified on a GPU). This is faithful in compute (every matmul is the bf16
matmul that fp32-master + autocast training runs) but is not a training recipe: the project's stage 2 keeps fp32
weights and Adam states (16 bytes/param), which for the 7B needs several GPUs (ZeRO/FSDP); its optimizer step,
memory-bound, moves about twice the bytes, so `ft` step time here is a lower bound for that recipe. LoRA adapters
stay fp32 (PEFT's default, as in real training) and run under bf16 autocast. Shapes that do not fit (13B `ft`,
~104 GB of states): `--layers N` keeps every per-layer shape and cuts the LLM's depth; MFU stays honest because
FLOPs are counted on the model as built (CLIP and lm_head then weigh more in the step).

FLOPs per step (model FLOPs, PaLM appendix B; activation recomputation is not counted, so this is MFU, not HFU):
  LLM, per token, with N = weights of the LLM's matmuls (all decoder linears + lm_head; the input embedding is a
  lookup), L layers, d = heads x head_dim, s = seq len, attention counted over the full s x s (PaLM's convention,
  not halved for the causal mask):
    ft:   6 N + 12 L d s                      (fwd 2N, activation grads 2N, weight grads 2N)
    lora: 4 N + 6 N_lora + 12 L d s           (frozen weights still need activation grads, no weight grads)
  projector, per image token: 4 N_proj        (fwd + weight grads; its input comes from a frozen tower)
  CLIP, per image, forward only, over the layers whose output is used (the last of 24 is computed but discarded):
    2 N_vis x 257 + 4 L_vis d_vis 257^2       (257 = 256 patches + CLS; N_vis = those layers' + patch conv weights)
With `--attn eager` (explicit s x s matmuls) these match torch.utils.flop_counter.FlopCounterMode to <0.01% on `tiny`
and a 1-layer 7B shape (forward + backward, CLIP cut to its used layers).
MFU = FLOPs per step / step time / peak dense bf16 FLOP/s of the device (`--peak-tflops`, else the table below).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import time

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # less fragmentation: 7B `ft` is a tight fit
import torch  # noqa: E402
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig  # noqa: E402

from sightbeyond.model.llava import SightLlava  # noqa: E402
from sightbeyond.training.stage2 import LLM_LINEAR  # noqa: E402

# (hidden, layers, heads, key/value heads, intermediate, vocab, tied embeddings, CLIP); +1 vocab row below for <image>,
# as build_llava's resize gives
LLMS = {"llama2-7b": (4096, 32, 32, 32, 11008, 32000, False, "vit-l/14"),
        "vicuna-13b": (5120, 40, 40, 40, 13824, 32000, False, "vit-l/14"),
        "smollm2": (576, 30, 9, 3, 1536, 49152, True, "shapesworld"),
        "tiny": (128, 2, 4, 4, 352, 1024, False, "tiny")}
# (hidden, layers, heads, intermediate, patch, image size); shapesworld: the embedded default's CLIP
CLIPS = {"vit-l/14": (1024, 24, 16, 4096, 14, 224), "tiny": (64, 2, 4, 256, 14, 224), "shapesworld": (96, 4, 4, 256, 32, 64)}
# dense bf16 TFLOP/s by a substring of torch.cuda.get_device_name(); the first match wins, so variants come first
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),
               ("A100", 312.0), ("L40S", 362.0)]


def build(shape: str, layers: int | None, device: torch.device, dtype: torch.dtype, attn: str) -> SightLlava:
    h, n_layers, heads, kv_heads, inter, vocab, tied, clip = LLMS[shape]
    vh, vl, vheads, vinter, patch, size = CLIPS[clip]
    text = LlamaConfig(hidden_size=h, num_hidden_layers=layers or n_layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, intermediate_size=inter, vocab_size=vocab + 1,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, use_cache=False, tie_word_embeddings=tied)
    vision = CLIPVisionConfig(hidden_size=vh, num_hidden_layers=vl, num_attention_heads=vheads, intermediate_size=vinter,
                              patch_size=patch, image_size=size, hidden_act="quick_gelu", projection_dim=768)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_type="linear", tie_word_embeddings=tied)
    with torch.device(device):  # materialised where it runs: a 7B never passes through host memory
        return SightLlava._from_config(config, dtype=dtype, attn_implementation=attn)


def linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def flops_per_step(model: SightLlava, mode: str, batch: int, seq: int, rank: int) -> float:
    """On the model before PEFT wraps it (its copies of the projector and LoRA's own linears would be counted)."""
    tc, vc = model.config.text_config, model.config.vision_config
    llm_linears = [m for m in model.model.language_model.modules() if isinstance(m, torch.nn.Linear)]
    n_llm = sum(m.weight.numel() for m in llm_linears) + model.lm_head.weight.numel()  # a tied lm_head is a matmul too
    n_lora = sum(rank * (m.in_features + m.out_features) for m in llm_linears)  # every decoder linear is a target
    attn = 12 * tc.num_hidden_layers * tc.num_attention_heads * tc.head_dim * seq
    llm = (6 * n_llm if mode == "ft" else 4 * n_llm + 6 * n_lora) + attn
    n_img = (vc.image_size // vc.patch_size) ** 2
    used = vc.num_hidden_layers + 1 + model.config.vision_feature_layer  # -2 -> 23 of 24 layers feed the projector
    vis_model = getattr(model.model.vision_tower, "vision_model", model.model.vision_tower)  # flattened in transformers 5
    n_vis = sum(linear_weights(layer) for layer in vis_model.encoder.layers[:used]) + vis_model.embeddings.patch_embedding.weight.numel()
    clip = 2 * n_vis * (n_img + 1) + 4 * used * vc.hidden_size * (n_img + 1) ** 2
    proj = 4 * linear_weights(model.model.multi_modal_projector) * n_img
    return batch * (seq * llm + proj + clip)


def make_batch(model: SightLlava, batch: int, seq: int, device: torch.device, dtype: torch.dtype) -> dict:
    vc, cfg = model.config.vision_config, model.config
    n_img = (vc.image_size // vc.patch_size) ** 2
    assert seq > n_img + 8, f"--seq-len must leave room for text after the {n_img} image tokens"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.image_token_id, (batch, seq), generator=g)
    ids[:, 0], ids[:, 1:1 + n_img] = 1, cfg.image_token_id
    labels = ids.clone()
    labels[:, :1 + n_img + (seq - 1 - n_img) // 4] = -100  # BOS, image and the instruction are not supervised
    pixels = torch.randn(batch, 3, vc.image_size, vc.image_size, generator=g)
    return {"input_ids": ids.to(device), "labels": labels.to(device), "pixel_values": pixels.to(device, dtype)}


def run_mode(args, mode: str, device: torch.device, precision: str, attn: str, peak: float | None) -> dict:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # the weights'
    compute = torch.float32 if precision == "fp32" else torch.bfloat16  # the matmuls'
    model = build(args.backbone_shape, args.layers, device, dtype, attn)
    model.model.vision_tower.requires_grad_(False)
    flops = flops_per_step(model, mode, args.batch_size, args.seq_len, rank=64)
    batch = make_batch(model, args.batch_size, args.seq_len, device, dtype)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                                 target_modules=rf"model\.language_model\.{LLM_LINEAR}",
                                                 modules_to_save=["multi_modal_projector"]))
    if args.grad_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})  # non-reentrant: frozen embeddings need no hook
    model.train()
    base = model.get_base_model() if mode == "lora" else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0, fused=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):  # as the Trainer's bf16=True
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):  # allocator, kernel autotuning and optimizer-state creation stay out of the timing
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    row = {"mode": mode, "shape": args.backbone_shape, "llm_layers": base.config.text_config.num_hidden_layers,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "precision": precision,
           "attn": attn, "seq_len": args.seq_len, "batch": args.batch_size, "grad_ckpt": args.grad_checkpointing,
           "trainable_params": sum(p.numel() for p in params), "step_s": dt, "tokens_per_s": args.batch_size * args.seq_len / dt,
           "tflops_per_step": flops / 1e12, "achieved_tflops": flops / dt / 1e12, "mfu": flops / dt / (peak * 1e12) if peak else None,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None, "loss": loss.item()}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone-shape", choices=sorted(LLMS), default="llama2-7b")
    p.add_argument("--mode", nargs="+", choices=["ft", "lora"], default=["lora", "ft"])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--layers", type=int, help="LLM depth (per-layer shapes unchanged), for shapes that do not fit")
    p.add_argument("--attn", choices=["auto", "sdpa", "flash_attention_2", "eager"], default="auto")
    p.add_argument("--peak-tflops", type=float, help="device peak dense bf16 TFLOP/s; default: looked up by GPU name")
    p.add_argument("--precision", nargs="+", choices=["bf16", "fp32", "bf16-autocast"],
                   help="default: bf16 on a GPU; fp32 and bf16-autocast, side by side, on a CPU")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = args.precision or (["bf16"] if device.type == "cuda" else ["fp32", "bf16-autocast"])
    attn = args.attn if args.attn != "auto" else (
        "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa")
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = next((v for k, v in PEAK_TFLOPS if k in torch.cuda.get_device_name()), None)
    torch.manual_seed(0)
    rows = []
    for mode in args.mode:
        for precision in precisions:  # one after the other on the same batch: the ratio is measured side by side
            rows.append(run_mode(args, mode, device, precision, attn, peak))
            gc.collect()  # the previous run's model and optimizer states must be gone before the next one is built
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(f"\n{rows[0]['device']}  attn={attn}  peak={peak or 'unknown'} TFLOP/s  "
          f"seq={args.seq_len} batch={args.batch_size} grad_ckpt={args.grad_checkpointing}")
    print(f"{'mode':<5} {'precision':<13} {'shape':<11} {'layers':>6} {'step s':>8} {'tokens/s':>10} {'vs first':>8} "
          f"{'TFLOP/step':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8} {'trainable':>13}")
    for r in rows:
        first = next(f for f in rows if f["mode"] == r["mode"])
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "n/a"
        print(f"{r['mode']:<5} {r['precision']:<13} {r['shape']:<11} {r['llm_layers']:>6} {r['step_s']:>8.3f} "
              f"{r['tokens_per_s']:>10.0f} {r['tokens_per_s'] / first['tokens_per_s']:>7.2f}x {r['tflops_per_step']:>10.4g} "
              f"{r['achieved_tflops']:>8.4g} {mfu:>6} {mem:>8} {r['trainable_params']:>13,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
