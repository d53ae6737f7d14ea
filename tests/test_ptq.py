"""qlearn.ptq: calibration against an independent torch computation, weight-range properties,
accuracy of 8-bit PTQ on a quickly trained model, the sweep, determinism and bad inputs."""
import copy

import pytest
import torch
from torch import nn

from qlearn.bn_fold import fuse_conv_bn
from qlearn.data import load_digits_data
from qlearn.models import mobilenet_v1
from qlearn.ptq import PTQ_METHODS, calibrate, post_training_quantize, ptq_sweep
from qlearn.qat import FakeQuantMobileNet, prepare_qat
from qlearn.qat_layers import QATConfig, QATConvBN
from qlearn.train import TrainConfig, evaluate, seed_everything, train


@pytest.fixture(scope="module")
def trained():
    data = load_digits_data(16, seed=0)
    seed_everything(0)
    model = mobilenet_v1(width=0.25, input_size=16)
    train(model, data.x_train, data.y_train, TrainConfig(epochs=4, seed=0), progress=False)
    model.eval()
    return data, model, evaluate(model, data.x_test, data.y_test)


def test_ptq_returns_eval_fake_quant_model_and_leaves_float_model_alone(trained):
    data, model, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = post_training_quantize(model, data.x_train, num_batches=2)
    assert isinstance(q, FakeQuantMobileNet) and not q.training
    assert all(qz.has_range for _, qz in q.quantizers())
    assert all(isinstance(m, QATConvBN) and m.freeze_step == 0 for m in q.modules() if isinstance(m, QATConvBN))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # BN statistics are the float model's: PTQ never trains
    convs = [m for m in q.modules() if isinstance(m, QATConvBN)]
    assert torch.equal(convs[0].bn.running_var, model.features[0].bn.running_var)


def test_first_layer_range_equals_independent_torch_computation(trained):
    data, model, _ = trained
    calib = data.x_train[:96]
    q = post_training_quantize(model, calib, batch_size=32, num_batches=None)
    # oracle: fuse with torch-side BN folding, quantize the input to 1/255 and the weights per channel
    block = model.features[0]
    fused = fuse_conv_bn(block.conv, block.bn)
    with torch.no_grad():
        w = fused.weight
        s_w = w.reshape(w.shape[0], -1).abs().amax(1) / 127
        w_hat = torch.fake_quantize_per_channel_affine(w, s_w, torch.zeros(w.shape[0], dtype=torch.int32), 0, -127, 127)
        x_hat = torch.fake_quantize_per_tensor_affine(calib, float(torch.tensor(1 / 255)), 0, 0, 255)
        y = torch.clamp(nn.functional.conv2d(x_hat, w_hat, fused.bias, fused.stride, fused.padding), 0, 6)
    act = q.features[0].act  # the stem's output quantizer
    # (float32 vs float64 folding may move a weight by one code: 1e-4 relative)
    torch.testing.assert_close(act.lo, y.min(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(act.hi, y.max(), rtol=1e-4, atol=1e-5)


def test_num_batches_limits_calibration(trained):
    data, model, _ = trained
    a = post_training_quantize(model, data.x_train, batch_size=32, num_batches=1)
    b = post_training_quantize(model, data.x_train[:32], batch_size=32, num_batches=None)
    c = post_training_quantize(model, data.x_train, batch_size=32, num_batches=4)
    ra = [(qz.lo.item(), qz.hi.item()) for _, qz in a.quantizers()]
    rb = [(qz.lo.item(), qz.hi.item()) for _, qz in b.quantizers()]
    rc = [(qz.lo.item(), qz.hi.item()) for _, qz in c.quantizers()]
    assert ra == rb
    assert ra != rc
    assert all(hc >= ha and lc <= la for (la, ha), (lc, hc) in zip(ra, rc))  # running min/max only widens


def test_calibrate_discards_old_ranges(trained):
    data, model, _ = trained
    q = prepare_qat(model, QATConfig(freeze_bn_step=0))
    q.train()
    with torch.no_grad():
        q(data.x_train[:16] * 3)  # a silly range from training mode
    calibrate(q, data.x_train[:32], batch_size=32)
    ref = post_training_quantize(model, data.x_train[:32], batch_size=32)
    assert not q.training
    for (_, a), (_, b) in zip(q.quantizers(), ref.quantizers()):
        assert torch.equal(a.lo, b.lo) and torch.equal(a.hi, b.hi)
        if not a.fixed:
            assert a.count.item() == 1


def test_8bit_per_channel_ptq_close_to_float(trained):
    data, model, float_acc = trained
    assert float_acc > 0.8  # the fixture really trained something
    q = post_training_quantize(model, data.x_train, QATConfig(weight_bits=8, per_channel=True), num_batches=4)
    assert abs(evaluate(q, data.x_test, data.y_test) - float_acc) <= 0.02


def _weight_errors(q):
    errs = []
    for m in q.modules():
        if isinstance(m, QATConvBN):
            w_fold, _ = m.folded()
            w_hat, _ = m._fake_quant_weight(w_fold)
            errs.append(((w_hat - w_fold) ** 2).mean().item())
    return errs


def test_weight_range_methods_order_the_weight_error(trained):
    data, model, _ = trained
    calib = data.x_train[:32]
    e = {name: _weight_errors(post_training_quantize(model, calib, QATConfig(weight_bits=4, per_channel=pc, weight_range=r), num_batches=1))
         for name, (pc, r) in PTQ_METHODS.items()}
    for i in range(len(e["per_tensor_minmax"])):
        assert e["per_tensor_mse"][i] <= e["per_tensor_minmax"][i] * (1 + 1e-6)
        assert e["per_channel_mse"][i] <= e["per_channel_minmax"][i] * (1 + 1e-6)
        assert e["per_channel_minmax"][i] <= e["per_tensor_minmax"][i] * (1 + 1e-6)


def test_ptq_sweep_structure_and_agrees_with_direct_ptq(trained):
    data, model, _ = trained
    calib, x_test, y_test = data.x_train[:64], data.x_test[:100], data.y_test[:100]
    res = ptq_sweep(model, calib, x_test, y_test, bits=(8, 4), methods=("per_tensor_minmax", "per_channel_mse"),
                    batch_size=32, num_batches=2, progress=False)
    assert set(res) == {"per_tensor_minmax", "per_channel_mse"}
    assert all(set(v) == {8, 4} and all(0.0 <= a <= 1.0 for a in v.values()) for v in res.values())
    direct = post_training_quantize(model, calib, QATConfig(weight_bits=4, per_channel=True, weight_range="mse"),
                                    batch_size=32, num_batches=2)
    assert res["per_channel_mse"][4] == evaluate(direct, x_test, y_test)


def test_ptq_is_deterministic(trained):
    data, model, _ = trained
    x = data.x_test[:20]
    a = post_training_quantize(model, data.x_train[:64], num_batches=2)(x)
    b = post_training_quantize(copy.deepcopy(model), data.x_train[:64], num_batches=2)(x)
    assert torch.equal(a, b)


def test_ptq_bad_inputs(trained):
    data, model, _ = trained
    imgs = data.x_train[:8]
    with pytest.raises(TypeError, match="FakeQuantMobileNet"):
        calibrate(model, imgs)
    q = prepare_qat(model)
    with pytest.raises(TypeError):
        calibrate(q, imgs.numpy())
    with pytest.raises(TypeError):
        calibrate(q, imgs[:, 0])  # not (N, C, H, W)
    with pytest.raises(TypeError):
        calibrate(q, imgs.to(torch.int64))
    with pytest.raises(ValueError, match="empty"):
        calibrate(q, imgs[:0])
    with pytest.raises(ValueError):
        calibrate(q, imgs, batch_size=0)
    with pytest.raises(ValueError):
        calibrate(q, imgs, num_batches=0)
    with pytest.raises(TypeError, match="QATConfig"):
        post_training_quantize(model, imgs, {"weight_bits": 8})
    with pytest.raises(TypeError):
        post_training_quantize(nn.Linear(2, 2), imgs)
    with pytest.raises(ValueError, match="unknown PTQ method"):
        ptq_sweep(model, imgs, imgs, data.y_train[:8], methods=("per_row",), progress=False)
    with pytest.raises(ValueError):
        ptq_sweep(model, imgs, imgs, data.y_train[:8], bits=(9,), progress=False)
    with pytest.raises(TypeError):
        ptq_sweep(model, imgs, imgs, data.y_train[:8], bits=8, progress=False)
