"""Segmenter: loading of every input kind, mmseg geometry, whole/slide/TTA values, batching."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segret_zoo.data.images import load_image
from segret_zoo.data.transforms import rescale_size
from segret_zoo.errors import ImageReadError as ImageLoadError
from segret_zoo.inference.predictor import Segmenter, slide_windows
from segret_zoo.models.segret import SegRet

torch.set_num_threads(1)
MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
# small protocol so the tests run in seconds: long <= 256, short <= 128; 96px windows
SMALL_CFG = dict(test_scale=(256, 128), crop_size=(96, 96), stride=(64, 64))


def tiny_segret(num_classes: int = 5, seed: int = 0) -> SegRet:
    torch.manual_seed(seed)
    model = SegRet(backbone=MINI, num_classes=num_classes, decoder_channels=32, pretrained_cfg=SMALL_CFG)
    with torch.no_grad():  # non-trivial ZIR paths and BN statistics, so nothing is a no-op
        for level in model.decoder.levels:
            level.zir_conv.weight.normal_(0, 0.05)
            level.zir_conv.bias.normal_(0, 0.05)
        # BatchNorm statistics of the model's own activations ("trained-looking"): every level and the fuse
        # norm then pass on the spatial structure of the features instead of one channel-wise offset
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the calibration batches
        model.train()(torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(seed)))
        # logits of a few units, like a trained model's: softmax comparisons then test the pipeline at
        # the tolerances below rather than the resize's pixel rounding amplified by huge logits
        model.decoder.classifier.weight.mul_(0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> SegRet:
    return tiny_segret()


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth-ish content (blocks) plus noise, so resizing is not trivial
    base = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
    return np.clip(base + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)


def reference_logits(model: SegRet, rgb: np.ndarray, size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """Independent whole-mode pipeline: resize (rounded, as uint8), normalize, forward, upsample."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    if tuple(size) != rgb.shape[:2]:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    x = (x / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------------------- geometry
def test_rescale_size_follows_mmseg_rule():
    # factor = min(2048/500, 512/333) = 1.5375..; int(dim * factor + 0.5)
    assert rescale_size(333, 500, (2048, 512)) == (512, 769)
    assert rescale_size(900, 2000, (2048, 512)) == (512, 1138)
    assert rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    # a very wide image is limited by the long edge, not the short one
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)
    assert rescale_size(900, 2000, (512, 2048)) == (512, 1138)  # order of the pair does not matter


def test_slide_windows_are_border_aligned_mmseg_grid():
    # w_grids = (1138 - 512 + 341 - 1) // 341 + 1 = 3; last window shifted to end at 1138
    assert slide_windows(512, 1138, (512, 512), (341, 341)) == [(0, 512, 0, 512), (0, 512, 341, 853),
                                                               (0, 512, 626, 1138)]
    wins = slide_windows(700, 1000, (512, 512), (341, 341))
    assert len(wins) == 2 * 3
    assert all(y2 - y1 == 512 and x2 - x1 == 512 for y1, y2, x1, x2 in wins)
    cover = np.zeros((700, 1000), int)
    for y1, y2, x1, x2 in wins:
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1 and max(w[1] for w in wins) == 700 and max(w[3] for w in wins) == 1000
    # image smaller than the crop in one dimension: one window spanning it
    assert slide_windows(80, 200, (96, 96), (64, 64)) == [(0, 80, 0, 96), (0, 80, 64, 160), (0, 80, 104, 200)]


def protocol_segmenter(architecture: str, tag: str, **kw) -> Segmenter:
    """A Segmenter with a zoo tag's test protocol (the tiny stand-in model is never run here)."""
    from segret_zoo.models.segret import default_pretrained_cfg

    m = SegRet(backbone=MINI, num_classes=5, decoder_channels=16, pretrained_cfg=default_pretrained_cfg(architecture, tag))
    return Segmenter(m, fold=False, **kw)


# (image width x height, TTA ratio) -> the size entering the model, (height, width), worked out by hand
# with the authors' rule: f = min(long / max(h, w), short / min(h, w)); h1, w1 = int(h * f + 0.5),
# int(w * f + 0.5) (mmcv's keep-ratio rescale of (long, short) x ratio); ADE20K and COCO-Stuff then
# round each side up to a multiple of 32 (AlignedResize), Cityscapes does not.
ADE_SIZES = [  # (2048, 512), divisor 32
    ((683, 512), 1.0, (512, 704)),     # f = min(2.998, 1) = 1 -> 512x683 -> 512x704
    ((512, 384), 1.0, (512, 704)),     # f = 512/384 = 1.333 -> 512x683 (682.67 + 0.5) -> 512x704
    ((2048, 1024), 1.0, (512, 1024)),  # f = min(1, 0.5) = 0.5 -> 512x1024, already aligned
    ((500, 333), 1.0, (512, 800)),     # f = 512/333 = 1.5375 -> 512x769 (768.77 + 0.5) -> 512x800
    ((375, 500), 1.0, (704, 512)),     # portrait: f = 512/375 = 1.3653 -> 683x512 -> 704x512
    ((3000, 300), 1.0, (224, 2048)),   # long side limits: f = 2048/3000 -> 205x2048 (204.8 + 0.5) -> 224x2048
    ((1000, 250), 1.0, (512, 2048)),   # both limits at once: f = 2.048 -> 512x2048
    ((683, 512), 0.5, (256, 352)),     # scale (1024, 256): f = 0.5 -> 256x342 -> 256x352
    ((500, 333), 1.75, (896, 1376)),   # scale (3584, 896): f = 896/333 -> 896x1345 (1345.35 + 0.5) -> 896x1376
    ((2048, 1024), 0.75, (384, 768)),  # scale (1536, 384): f = 0.375 -> 384x768
]
LARGE_ADE_SIZES = [  # segret_large on ADE20K: (2048, 640), divisor 32
    ((683, 512), 1.0, (640, 864)),     # f = 640/512 = 1.25 -> 640x854 (853.75 + 0.5) -> 640x864
    ((500, 333), 1.0, (640, 992)),     # f = 640/333 = 1.9219 -> 640x961 (960.96 + 0.5) -> 640x992
]
CITYSCAPES_SIZES = [  # (2048, 1024), no rounding
    ((2048, 1024), 1.0, (1024, 2048)),  # the frame's own size: no resize at all
    ((1024, 512), 1.0, (1024, 2048)),   # f = 2
    ((1000, 333), 1.0, (682, 2048)),    # f = 2048/1000 -> 682x2048 (681.98 + 0.5), 682 stays (no AlignedResize)
    ((2048, 1024), 0.5, (512, 1024)),   # scale (1024, 512)
]


@pytest.mark.parametrize("architecture, tag, table", [
    ("segret_tiny", "ade20k", ADE_SIZES), ("segret_base", "cocostuff", ADE_SIZES),
    ("segret_large", "ade20k", LARGE_ADE_SIZES), ("segret_small", "cityscapes", CITYSCAPES_SIZES),
])
def test_protocol_resize_sizes_follow_the_authors_rule(architecture, tag, table):
    seg = protocol_segmenter(architecture, tag)
    assert seg.mode == "whole"  # every config: whole inference
    for (w, h), ratio, expected in table:
        assert seg.target_size(h, w, ratio) == expected, ((w, h), ratio)


def test_aligned_resize_is_a_second_resize_of_the_rescaled_image():
    seg = protocol_segmenter("segret_tiny", "ade20k")
    assert seg.resize_steps(333, 500) == [(512, 769), (512, 800)]  # rescale, then AlignedResize
    assert seg.resize_steps(1024, 2048) == [(512, 1024)]  # the rescale is already aligned
    assert seg.resize_steps(512, 704) == []  # nothing to do
    city = protocol_segmenter("segret_tiny", "cityscapes")
    assert city.resize_steps(1024, 2048) == [] and city.resize_steps(333, 1000) == [(682, 2048)]
    assert Segmenter(seg.model, fold=False, size_divisor=False).target_size(333, 500) == (512, 769)


def test_aligned_protocol_values_match_an_independent_two_step_pipeline(model):
    # a small protocol: fit (256, 128), then sides up to a multiple of 32; 90x140 -> 128x199 -> 128x224
    seg = Segmenter(model, mode="whole", test_scale=(256, 128), size_divisor=32)
    rgb = random_image(90, 140, seed=5)
    labels, probs = seg(rgb, return_probs=True)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    for size in ((128, 199), (128, 224)):  # each resize lands on uint8 values, as cv2 gives mmseg
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    x = (x / 255 - torch.tensor(seg.pretrained_cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        seg.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = F.interpolate(model(x), size=(90, 140), mode="bilinear", align_corners=False)[0].softmax(0)
    np.testing.assert_allclose(probs, ref.numpy(), atol=1e-5)
    assert labels.shape == (90, 140)
    unaligned = Segmenter(model, mode="whole", test_scale=(256, 128), size_divisor=False)(rgb, return_probs=True)[1]
    assert np.abs(unaligned - probs).max() > 1e-3  # the rounding is not a no-op


def test_protocol_description_and_mode_come_from_the_tag():
    ade = protocol_segmenter("segret_tiny", "ade20k")
    assert ade.describe() == ("keep-ratio resize to fit 2048x512 (long x short), sides rounded up to a multiple of "
                              "32; whole inference; single scale; logits resized to the original size")
    ms = protocol_segmenter("segret_large", "ade20k", tta=True).describe()
    assert "fit 2048x640" in ms and "scales 0.5, 0.75, 1, 1.25, 1.5, 1.75 of that with horizontal flip" in ms
    city = protocol_segmenter("segret_tiny", "cityscapes").describe()
    assert "fit 2048x1024" in city and "multiple" not in city and "whole inference" in city
    assert protocol_segmenter("segret_tiny", "cityscapes", mode="slide").mode == "slide"  # explicit wins
    untagged = Segmenter(SegRet(backbone=MINI, num_classes=5, decoder_channels=16), fold=False)
    assert untagged.mode == "auto" and untagged.size_divisor is None


# ------------------------------------------------------------------------------- sizes and values
@pytest.mark.parametrize("hw", [(333, 500), (900, 2000)])
def test_output_has_image_size_and_matches_reference_whole(model, hw):
    h, w = hw
    rgb = random_image(h, w)
    seg = Segmenter(model, mode="whole")
    labels, probs = seg(rgb, return_probs=True)
    assert labels.shape == (h, w) and labels.dtype == np.uint8
    assert probs.shape == (5, h, w) and probs.dtype == np.float32
    size = rescale_size(h, w, SMALL_CFG["test_scale"])
    ref = reference_logits(model, rgb, size)
    ref = F.interpolate(ref, size=(h, w), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(probs, ref.softmax(0).numpy(), atol=1e-5)
    assert (labels == ref.argmax(0).numpy()).mean() > 0.999
    assert len(np.unique(labels)) > 1  # the image is really segmented, not a constant


@pytest.mark.parametrize("hw", [(333, 500), (900, 2000)])
def test_slide_matches_reference_mmseg_slide(model, hw):
    h, w = hw
    rgb = random_image(h, w, seed=1)
    seg = Segmenter(model, mode="slide", window_batch_size=3)
    labels, probs = seg(rgb, return_probs=True)
    assert labels.shape == (h, w) and probs.shape == (5, h, w)
    # independent slide: windows one by one, sum / count
    rh, rw = rescale_size(h, w, SMALL_CFG["test_scale"])
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False).round().clamp(0, 255)
    x = (x / 255 - torch.tensor(seg.pretrained_cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        seg.pretrained_cfg["std"]).view(1, 3, 1, 1)
    acc, cnt = torch.zeros(1, 5, rh, rw), torch.zeros(1, 1, rh, rw)
    h_grids = max(rh - 96 + 64 - 1, 0) // 64 + 1
    w_grids = max(rw - 96 + 64 - 1, 0) // 64 + 1
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * 64 + 96, rh), min(j * 64 + 96, rw)
            y1, x1 = max(y2 - 96, 0), max(x2 - 96, 0)
            with torch.no_grad():
                acc[:, :, y1:y2, x1:x2] += model(x[:, :, y1:y2, x1:x2])
            cnt[:, :, y1:y2, x1:x2] += 1
    assert w_grids > 1
    ref = F.interpolate(acc / cnt, size=(h, w), mode="bilinear", align_corners=False)[0].softmax(0)
    np.testing.assert_allclose(probs, ref.numpy(), atol=1e-5)
    # and it is not just whole mode under another name
    whole = Segmenter(model, mode="whole")(rgb, return_probs=True)[1]
    assert np.abs(whole - probs).max() > 1e-3


@pytest.mark.parametrize("hw", [(333, 500), (900, 2000)])
def test_slide_equals_whole_when_one_window_covers_the_image(model, hw):
    h, w = hw
    rgb = random_image(h, w, seed=2)
    whole = Segmenter(model, mode="whole")(rgb, return_probs=True)
    slide = Segmenter(model, mode="slide", crop_size=(300, 300), stride=(200, 200))(rgb, return_probs=True)
    np.testing.assert_allclose(slide[1], whole[1], atol=1e-6)
    # labels agree wherever the top two classes are further apart than float rounding
    top2 = np.sort(whole[1], axis=0)[-2:]
    decided = (top2[1] - top2[0]) > 1e-5
    assert decided.mean() > 0.999
    np.testing.assert_array_equal(slide[0][decided], whole[0][decided])
    assert slide[0].shape == (h, w)


def test_auto_mode_picks_slide_only_beyond_margin(model):
    seg = Segmenter(model)  # crop 96x96: slide above twice its area (18432 px)
    assert seg.choose_mode(128, 144) == "whole" and seg.choose_mode(128, 145) == "slide"
    assert seg.choose_mode(40, 400) == "whole"  # long but small: one pass is cheap and exact
    cityscapes = Segmenter(model, crop_size=(512, 1024), test_scale=(2048, 1024))
    assert cityscapes.choose_mode(*cityscapes.target_size(1024, 2048)) == "slide"
    ade = Segmenter(model, crop_size=(512, 512), test_scale=(2048, 512))
    assert ade.choose_mode(*ade.target_size(333, 500)) == "whole"  # 512x769, as mmseg evaluates ADE20K
    rgb = random_image(900, 2000)  # resized to 128 x 284 -> slide
    np.testing.assert_array_equal(seg(rgb), Segmenter(model, mode="slide")(rgb))


def test_tta_single_scale_no_flip_equals_plain_exactly(model):
    rgb = random_image(333, 500, seed=3)
    plain = Segmenter(model)(rgb, return_probs=True)
    tta = Segmenter(model, tta=True, scales=(1.0,), flip=False)(rgb, return_probs=True)
    np.testing.assert_array_equal(tta[0], plain[0])
    np.testing.assert_array_equal(tta[1], plain[1])


def test_tta_averages_softmax_over_scales_and_flips(model):
    rgb = random_image(333, 500, seed=4)
    seg = Segmenter(model, mode="whole", tta=True, scales=(0.5, 1.25))
    assert seg.flip
    labels, probs = seg(rgb, return_probs=True)
    expected = torch.zeros(5, 333, 500)
    for ratio in (0.5, 1.25):
        # the ratio scales the test scale (mmseg MultiScaleFlipAug), then the keep-ratio rule applies
        size = rescale_size(333, 500, (int(256 * ratio), int(128 * ratio)))
        for flip in (False, True):
            img = rgb[:, ::-1].copy() if flip else rgb
            lg = F.interpolate(reference_logits(model, img, size), size=(333, 500), mode="bilinear",
                               align_corners=False)[0]
            expected += (lg.flip(-1) if flip else lg).softmax(0)
    expected /= 4
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert (labels == expected.argmax(0).numpy()).mean() > 0.999
    assert Segmenter(model, tta=True).scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def test_batch_is_padded_not_resized(model):
    a, b = random_image(333, 500, seed=5), random_image(200, 150, seed=6)  # -> 128x192 and 128x96
    seg = Segmenter(model, mode="whole", batch_size=2, test_scale=False)
    out_a, out_b = seg([a, b], return_probs=True)
    assert out_a[0].shape == (333, 500) and out_b[0].shape == (200, 150)
    # the largest image is not padded: same as alone
    np.testing.assert_allclose(out_a[1], Segmenter(model, mode="whole", test_scale=False)(a, return_probs=True)[1],
                               atol=1e-5)
    # the smaller one equals the model on the zero-padded (normalized) input, cropped back
    x = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)) / torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(F.pad(x, (0, 500 - 150, 0, 333 - 200)))[0, :, :200, :150].softmax(0)
    np.testing.assert_allclose(out_b[1], ref.numpy(), atol=1e-5)


def test_batched_flip_tta_equals_one_by_one(model):
    imgs = [random_image(150, 220, seed=s) for s in (9, 10, 11)]  # same size: nothing to pad
    batched = Segmenter(model, tta=True, scales=(0.75, 1.0), batch_size=2)(imgs, return_probs=True)
    single = Segmenter(model, tta=True, scales=(0.75, 1.0))
    for img, (labels, probs) in zip(imgs, batched):
        ref_labels, ref_probs = single(img, return_probs=True)
        np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
        assert (labels == ref_labels).mean() > 0.999


def test_list_in_list_out_and_dtypes(model):
    imgs = [random_image(64, 80, seed=s) for s in range(3)]
    out = Segmenter(model)(imgs)
    assert isinstance(out, list) and len(out) == 3 and all(o.shape == (64, 80) for o in out)
    big = tiny_segret(num_classes=300, seed=1)
    labels = Segmenter(big)(imgs[0])
    assert labels.dtype == np.int16 and labels.max() < 300


def test_eval_mode_and_inference_mode(model):
    m = tiny_segret(seed=2)
    m.train()
    rgb = random_image(64, 80)
    seg = Segmenter(m)
    assert m.training and not seg.model.training  # the folded copy runs; the user's model is untouched
    seg.model.train()  # switched back: predict still runs in eval mode (dropout off)
    first = seg(rgb, return_probs=True)[1]
    assert not seg.model.training
    np.testing.assert_array_equal(first, seg(rgb, return_probs=True)[1])
    unfolded = Segmenter(m, fold=False)
    assert not m.training  # without folding the predictor runs (and switches) the model itself
    np.testing.assert_allclose(unfolded(rgb, return_probs=True)[1], first, atol=1e-5)


def test_bf16_autocast_runs_and_mostly_agrees(model):
    rgb = random_image(96, 128, seed=7)
    fp32 = Segmenter(model)(rgb)
    bf16 = Segmenter(model, dtype="bf16")(rgb)
    assert bf16.shape == fp32.shape and (bf16 == fp32).mean() > 0.8


# ------------------------------------------------------------------------------- loading
def test_pil_modes_convert_correctly(tmp_path: Path):
    rgb = random_image(40, 50, seed=8)
    gray = rgb[..., 0]
    assert np.array_equal(load_image(Image.fromarray(gray)), np.repeat(gray[..., None], 3, 2))
    rgba = np.dstack([rgb, np.full((40, 50), 7, np.uint8)])
    assert np.array_equal(load_image(Image.fromarray(rgba)), rgb)  # alpha dropped, colours kept
    la = Image.fromarray(gray).convert("LA")
    assert np.array_equal(load_image(la), np.repeat(gray[..., None], 3, 2))
    pal = Image.fromarray(rgb).quantize(16)
    assert np.array_equal(load_image(pal), np.asarray(pal.convert("RGB")))
    # 16-bit grayscale: v * 257 must come back as v (scaled, not clipped or truncated)
    path16 = tmp_path / "gray16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path16)
    assert Image.open(path16).mode.startswith("I")
    assert np.array_equal(load_image(path16), np.repeat(gray[..., None], 3, 2))
    assert np.array_equal(load_image(gray.astype(np.uint16) * 257), np.repeat(gray[..., None], 3, 2))
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk, quality=95)
    loaded = load_image(cmyk)
    assert loaded.shape == (40, 50, 3) and np.abs(loaded.astype(int) - rgb).mean() < 12
    assert np.array_equal(load_image(np.dstack([rgb, rgb[..., :1]])), rgb)
    # EXIF orientation 6 (rotate 90° clockwise to display): the label map follows the displayed image
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rotated.jpg").shape == (50, 40, 3)
    assert np.array_equal(load_image(rgb.astype(np.float32) / 255), rgb)


def test_bad_inputs_raise_one_line_errors_naming_the_file(tmp_path: Path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image\nat all\n")
    Image.new("RGB", (30, 20)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + (0).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    (tmp_path / "zero.png").write_bytes(png + b"\x00" * 8)
    cases = {"empty.png": "empty file", "notes.jpg": "not an image", "trunc.jpg": "cannot decode",
             "zero.png": "zero-size", "missing.png": "no such file"}
    for name, reason in cases.items():
        with pytest.raises(ImageLoadError) as info:
            load_image(tmp_path / name)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and reason in message and "\n" not in message
    for arr in (np.zeros((0, 5, 3), np.uint8), np.zeros((3, 4, 5), np.uint8)):
        with pytest.raises(ImageLoadError):
            load_image(arr)


def test_predict_batch_with_bad_files_completes_on_warn(model, tmp_path: Path):
    good = tmp_path / "good.png"
    Image.fromarray(random_image(60, 70)).save(good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    seg = Segmenter(model)
    with pytest.raises(ImageLoadError, match="empty.jpg"):
        seg([good, tmp_path / "empty.jpg"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = seg([tmp_path / "empty.jpg", good, str(good)], on_error="warn")
    assert out[0] is None and out[1].shape == (60, 70)
    np.testing.assert_array_equal(out[1], out[2])
    assert len(caught) == 1 and "empty.jpg" in str(caught[0].message)
