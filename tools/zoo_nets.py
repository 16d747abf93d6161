"""The classic architectures behind zoo_defs/, as small builder functions.

Each function returns a ``Net`` that renders itself as prototxt text in
netdef's zoo style: 2-space indentation, one field per line, layer and top
names as in the published Caffe models (weights load by layer name).
``tools/gen_zoo.py`` adds the comment headers and writes the files.
"""
from __future__ import annotations


# --------------------------------------------------------------- writer ----

class E(str):
    """An enum value (MAX, TEST, LMDB): written bare, not quoted."""


class Inline(str):
    """A message body written on one line, e.g. a short input shape."""


def _scalar(value) -> str:
    if isinstance(value, E):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)  # int, or a float such as 0.0001


def _emit(lines: list[str], key: str, value, depth: int) -> None:
    pad = "  " * depth
    if isinstance(value, list):  # a repeated field: one entry per value
        for item in value:
            _emit(lines, key, item, depth)
    elif isinstance(value, Inline):
        lines.append(f"{pad}{key} {{ {value} }}")
    elif isinstance(value, dict):
        lines.append(f"{pad}{key} {{")
        for k, v in value.items():
            _emit(lines, k, v, depth + 1)
        lines.append(f"{pad}}}")
    else:
        lines.append(f"{pad}{key}: {_scalar(value)}")


class Net:
    """An ordered list of layers; ``train`` adds param specs and fillers."""

    def __init__(self, name: str, train: bool = False):
        self.name = name
        self.train = train
        self.layers: list[dict] = []

    def add(self, name: str, type_: str, bottom=(), top=None, **fields) -> str:
        bottoms = [bottom] if isinstance(bottom, str) else list(bottom)
        tops = [name] if top is None else ([top] if isinstance(top, str) else list(top))
        body = {"name": name, "type": type_}
        if bottoms:
            body["bottom"] = bottoms
        body["top"] = tops
        body.update({k: v for k, v in fields.items() if v is not None})
        self.layers.append(body)
        return tops[0]

    def text(self, header: list[str]) -> str:
        lines = ["# " + h if h else "#" for h in header]
        lines += ["", f'name: "{self.name}"']
        for layer in self.layers:
            _emit(lines, "layer", layer, 0)
        return "\n".join(lines) + "\n"


# ------------------------------------------------------- layer helpers ----
# Each helper returns the name of the blob it produced. In-place layers
# (ReLU, Dropout, BatchNorm, Scale) write back into their bottom, as in the
# published models, so the weight-carrying layers keep their own top names.

MAX, AVE = E("MAX"), E("AVE")
TRAIN, TEST = E("TRAIN"), E("TEST")
LEARN = [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]


def gaussian(std: float) -> dict:
    return {"type": "gaussian", "std": std}


def constant(value: float = 0) -> dict:
    return {"type": "constant", "value": value}


XAVIER = {"type": "xavier"}


def _learned(net: Net, bias: bool, fill) -> dict:
    """param specs and fillers, written only into training nets."""
    if not net.train:
        return {}
    wf, bf = fill if fill else (XAVIER, constant(0))
    fields = {"param": LEARN if bias else LEARN[:1], "weight_filler": wf}
    if bias:
        fields["bias_filler"] = bf
    return fields


def conv(net, name, bottom, num_output, kernel, stride=1, pad=0, group=1,
         bias=True, top=None, fill=None) -> str:
    extra = _learned(net, bias, fill)
    p = {"num_output": num_output}
    if not bias:
        p["bias_term"] = False
    if pad:
        p["pad"] = pad
    p["kernel_size"] = kernel
    if stride != 1:
        p["stride"] = stride
    if group != 1:
        p["group"] = group
    for key in ("weight_filler", "bias_filler"):
        if key in extra:
            p[key] = extra[key]
    return net.add(name, "Convolution", bottom, top, param=extra.get("param"),
                   convolution_param=p)


def fc(net, name, bottom, num_output, fill=None) -> str:
    extra = _learned(net, True, fill)
    p = {"num_output": num_output}
    p.update({k: v for k, v in extra.items() if k != "param"})
    return net.add(name, "InnerProduct", bottom, param=extra.get("param"),
                   inner_product_param=p)


def relu(net, name, blob) -> str:
    return net.add(name, "ReLU", blob, blob)


def dropout(net, name, blob, ratio) -> str:
    return net.add(name, "Dropout", blob, blob, dropout_param={"dropout_ratio": ratio})


def pool(net, name, bottom, method, kernel=None, stride=1, pad=0, top=None) -> str:
    p = {"pool": method}
    if kernel is None:
        p["global_pooling"] = True
    else:
        if pad:
            p["pad"] = pad
        p["kernel_size"] = kernel
        p["stride"] = stride
    return net.add(name, "Pooling", bottom, top, pooling_param=p)


def lrn(net, name, bottom) -> str:
    """Cross-channel LRN with AlexNet's constants (Caffe divides alpha by local_size)."""
    return net.add(name, "LRN", bottom,
                   lrn_param={"local_size": 5, "alpha": 0.0001, "beta": 0.75})


def batch_norm(net, bn_name, scale_name, blob) -> str:
    """BatchNorm (statistics) + Scale (learned gamma/beta), both in place.

    Deploy nets pin use_global_stats; training nets leave it unset so the
    phase decides (batch statistics in TRAIN, stored ones in TEST).
    """
    bn = {"use_global_stats": True} if not net.train else None
    net.add(bn_name, "BatchNorm", blob, blob, batch_norm_param=bn)
    return net.add(scale_name, "Scale", blob, blob, scale_param={"bias_term": True})


def input_layer(net, *shape) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return net.add("data", "Input", top="data", input_param=Inline(f"shape {{ {dims} }}"))


def softmax(net, bottom) -> str:
    return net.add("prob", "Softmax", bottom)


def data_pair(net, type_, train, test) -> None:
    """A TRAIN and a TEST data layer, both producing data + label.

    ``train``/``test`` are (transform_param, <type>_param) dicts.
    """
    key = {"Data": "data_param", "ImageData": "image_data_param"}[type_]
    for phase, (transform, source) in ((TRAIN, train), (TEST, test)):
        net.add("data", type_, top=["data", "label"], include={"phase": phase},
                transform_param=transform, **{key: source})


def lmdb(source: str, batch: int) -> dict:
    return {"source": source, "batch_size": batch, "backend": E("LMDB")}


def classifier_losses(net, logits, top5=False) -> None:
    net.add("loss", "SoftmaxWithLoss", [logits, "label"], "loss")
    net.add("accuracy", "Accuracy", [logits, "label"], "accuracy", include={"phase": TEST})
    if top5:
        net.add("accuracy_top5", "Accuracy", [logits, "label"], "accuracy_top5",
                include={"phase": TEST}, accuracy_param={"top_k": 5})


# -------------------------------------------------------- architectures ----

def lenet(train: bool) -> Net:
    net = Net("LeNet", train)
    if train:
        scale = {"scale": 0.00390625}  # bytes 0..255 -> [0, 1)
        data_pair(net, "Data", (scale, lmdb("examples/mnist/mnist_train_lmdb", 64)),
                  (scale, lmdb("examples/mnist/mnist_test_lmdb", 100)))
    else:
        input_layer(net, 1, 1, 28, 28)
    conv(net, "conv1", "data", 20, 5)
    pool(net, "pool1", "conv1", MAX, 2, 2)
    conv(net, "conv2", "pool1", 50, 5)
    pool(net, "pool2", "conv2", MAX, 2, 2)
    relu(net, "relu1", fc(net, "ip1", "pool2", 500))
    fc(net, "ip2", "ip1", 10)
    if train:
        classifier_losses(net, "ip2")
    else:
        softmax(net, "ip2")
    return net


def alexnet(train: bool = False, caffenet: bool = False) -> Net:
    """AlexNet: conv-relu-norm-pool. CaffeNet swaps to conv-relu-pool-norm."""
    net = Net("CaffeNet" if caffenet else "AlexNet", train)
    if train:
        mean = "data/ilsvrc12/imagenet_mean.binaryproto"
        data_pair(net, "Data",
                  ({"mirror": True, "crop_size": 227, "mean_file": mean},
                   lmdb("examples/imagenet/ilsvrc12_train_lmdb", 256)),
                  ({"mirror": False, "crop_size": 227, "mean_file": mean},
                   lmdb("examples/imagenet/ilsvrc12_val_lmdb", 50)))
    else:
        input_layer(net, 10, 3, 227, 227)
    # The paper starts biases of conv2/4/5 and the hidden fc layers at 1;
    # 0.1 is the value Caffe's recipe uses, which starts learning reliably.
    c0 = (gaussian(0.01), constant(0))     # conv1, conv3, fc8
    c1 = (gaussian(0.01), constant(0.1))   # conv2, conv4, conv5
    f1 = (gaussian(0.005), constant(0.1))  # fc6, fc7

    def block(i, bottom, *conv_args, fill):
        top = relu(net, f"relu{i}", conv(net, f"conv{i}", bottom, *conv_args, fill=fill))
        if caffenet:
            return lrn(net, f"norm{i}", pool(net, f"pool{i}", top, MAX, 3, 2))
        return pool(net, f"pool{i}", lrn(net, f"norm{i}", top), MAX, 3, 2)

    x = block(1, "data", 96, 11, 4, fill=c0)
    x = block(2, x, 256, 5, 1, 2, 2, fill=c1)
    x = relu(net, "relu3", conv(net, "conv3", x, 384, 3, pad=1, fill=c0))
    x = relu(net, "relu4", conv(net, "conv4", x, 384, 3, pad=1, group=2, fill=c1))
    x = relu(net, "relu5", conv(net, "conv5", x, 256, 3, pad=1, group=2, fill=c1))
    x = pool(net, "pool5", x, MAX, 3, 2)
    for i in (6, 7):
        x = dropout(net, f"drop{i}", relu(net, f"relu{i}", fc(net, f"fc{i}", x, 4096, f1)), 0.5)
    fc(net, "fc8", x, 1000, c0)
    if train:
        classifier_losses(net, "fc8", top5=True)
    else:
        softmax(net, "fc8")
    return net


def vgg16() -> Net:
    net = Net("VGG_ILSVRC_16_layers")
    x = input_layer(net, 1, 3, 224, 224)
    for stage, (width, depth) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for j in range(1, depth + 1):
            x = relu(net, f"relu{stage}_{j}", conv(net, f"conv{stage}_{j}", x, width, 3, pad=1))
        x = pool(net, f"pool{stage}", x, MAX, 2, 2)
    for i in (6, 7):
        x = dropout(net, f"drop{i}", relu(net, f"relu{i}", fc(net, f"fc{i}", x, 4096)), 0.5)
    softmax(net, fc(net, "fc8", x, 1000))
    return net


def nin_imagenet() -> Net:
    """Four mlpconv blocks; names (including the odd relu numbering and the
    '-1024' suffixes of the last block) follow the published model."""
    net = Net("nin_imagenet")
    x = input_layer(net, 1, 3, 224, 224)
    relus = iter(f"relu{i}" for i in (0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12))
    blocks = [  # conv name, top, outputs, kernel, stride, pad, cccp names, pool
        ("conv1", "conv1", 96, 11, 4, 0, ("cccp1", "cccp2"), "pool0"),
        ("conv2", "conv2", 256, 5, 1, 2, ("cccp3", "cccp4"), "pool2"),
        ("conv3", "conv3", 384, 3, 1, 1, ("cccp5", "cccp6"), "pool3"),
        ("conv4-1024", "conv4", 1024, 3, 1, 1, ("cccp7-1024", "cccp8-1024"), "pool4"),
    ]
    for name, top, width, k, s, p, cccps, pool_name in blocks:
        x = relu(net, next(relus), conv(net, name, x, width, k, s, p, top=top))
        for cccp in cccps:
            out = 1000 if cccp == "cccp8-1024" else width
            x = relu(net, next(relus), conv(net, cccp, x, out, 1, top=cccp.split("-")[0]))
        if pool_name == "pool4":  # 6x6 map -> 1x1: average pooling is the classifier
            x = pool(net, pool_name, x, AVE, 6, 1)
        else:
            x = pool(net, pool_name, x, MAX, 3, 2)
        if pool_name == "pool3":
            x = dropout(net, "drop", x, 0.5)
    softmax(net, x)
    return net


def inception(net, name, bottom, n1, n3r, n3, n5r, n5, npool) -> str:
    m = f"inception_{name}"

    def unit(suffix, x, width, k, pad=0):
        return relu(net, f"{m}/relu_{suffix}", conv(net, f"{m}/{suffix}", x, width, k, pad=pad))

    b1 = unit("1x1", bottom, n1, 1)
    b3 = unit("3x3", unit("3x3_reduce", bottom, n3r, 1), n3, 3, 1)
    b5 = unit("5x5", unit("5x5_reduce", bottom, n5r, 1), n5, 5, 2)
    bp = unit("pool_proj", pool(net, f"{m}/pool", bottom, MAX, 3, 1, pad=1), npool, 1)
    return net.add(f"{m}/output", "Concat", [b1, b3, b5, bp])


def googlenet() -> Net:
    net = Net("GoogleNet")
    x = input_layer(net, 1, 3, 224, 224)
    x = relu(net, "conv1/relu_7x7", conv(net, "conv1/7x7_s2", x, 64, 7, 2, 3))
    x = lrn(net, "pool1/norm1", pool(net, "pool1/3x3_s2", x, MAX, 3, 2))
    x = relu(net, "conv2/relu_3x3_reduce", conv(net, "conv2/3x3_reduce", x, 64, 1))
    x = relu(net, "conv2/relu_3x3", conv(net, "conv2/3x3", x, 192, 3, pad=1))
    x = pool(net, "pool2/3x3_s2", lrn(net, "conv2/norm2", x), MAX, 3, 2)
    table = {  # Szegedy et al. 2015, Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
        "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
        "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
        "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
        "4e": (256, 160, 320, 32, 128, 128),
        "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
    }
    for name, widths in table.items():
        x = inception(net, name, x, *widths)
        if name in ("3b", "4e"):
            stage = 3 if name == "3b" else 4
            x = pool(net, f"pool{stage}/3x3_s2", x, MAX, 3, 2)
    x = dropout(net, "pool5/drop_7x7_s1", pool(net, "pool5/7x7_s1", x, AVE, 7, 1), 0.4)
    softmax(net, fc(net, "loss3/classifier", x, 1000))
    return net


def conv_bn(net, tag, bottom, width, kernel, stride=1, pad=0, relu_name=None,
            conv_name=None) -> str:
    """ResNet unit: bias-free conv, BatchNorm + Scale named bn<tag>/scale<tag>."""
    x = conv(net, conv_name or f"res{tag}", bottom, width, kernel, stride, pad, bias=False)
    batch_norm(net, f"bn{tag}", f"scale{tag}", x)
    return relu(net, relu_name, x) if relu_name else x


def resnet50() -> Net:
    net = Net("ResNet-50")
    x = input_layer(net, 1, 3, 224, 224)
    # The published model's conv1 carries a bias (the other convs do not);
    # keeping it lets its weights load by name.
    x = conv(net, "conv1", x, 64, 7, 2, 3)
    batch_norm(net, "bn_conv1", "scale_conv1", x)
    x = pool(net, "pool1", relu(net, "conv1_relu", x), MAX, 3, 2)
    stages = [(2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)]
    for stage, blocks, mid in stages:
        for b in range(blocks):
            tag = f"{stage}{'abcdef'[b]}"
            stride = 2 if (b == 0 and stage > 2) else 1  # on the 1x1s, as published
            shortcut = x
            if b == 0:
                shortcut = conv_bn(net, f"{tag}_branch1", x, 4 * mid, 1, stride)
            y = conv_bn(net, f"{tag}_branch2a", x, mid, 1, stride,
                        relu_name=f"res{tag}_branch2a_relu")
            y = conv_bn(net, f"{tag}_branch2b", y, mid, 3, 1, 1,
                        relu_name=f"res{tag}_branch2b_relu")
            y = conv_bn(net, f"{tag}_branch2c", y, 4 * mid, 1)
            x = net.add(f"res{tag}", "Eltwise", [shortcut, y],
                        eltwise_param={"operation": E("SUM")})
            x = relu(net, f"res{tag}_relu", x)
    x = pool(net, "pool5", x, AVE, 7, 1)
    softmax(net, fc(net, "fc1000", x, 1000))
    return net


def fire(net, n, bottom, squeeze, expand) -> str:
    f = f"fire{n}"
    s = relu(net, f"{f}/relu_squeeze1x1", conv(net, f"{f}/squeeze1x1", bottom, squeeze, 1))
    e1 = relu(net, f"{f}/relu_expand1x1", conv(net, f"{f}/expand1x1", s, expand, 1))
    e3 = relu(net, f"{f}/relu_expand3x3", conv(net, f"{f}/expand3x3", s, expand, 3, pad=1))
    return net.add(f"{f}/concat", "Concat", [e1, e3])


def squeezenet_v1_1() -> Net:
    net = Net("SqueezeNet_v1.1")
    x = input_layer(net, 1, 3, 227, 227)
    x = pool(net, "pool1", relu(net, "relu_conv1", conv(net, "conv1", x, 64, 3, 2)), MAX, 3, 2)
    for n, s, e in [(2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128),
                    (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256)]:
        x = fire(net, n, x, s, e)
        if n in (3, 5):
            x = pool(net, f"pool{n}", x, MAX, 3, 2)
    x = dropout(net, "drop9", x, 0.5)
    x = relu(net, "relu_conv10", conv(net, "conv10", x, 1000, 1))
    softmax(net, pool(net, "pool10", x, AVE))
    return net


def traffic_signs(train: bool) -> Net:
    net = Net("TrafficSignsLeNet", train)
    if train:
        def images(listing, batch, shuffle):
            return {"source": f"data/gtsrb/{listing}", "batch_size": batch, "shuffle": shuffle,
                    "new_height": 32, "new_width": 32, "root_folder": "data/gtsrb/"}
        # No mirroring: a mirrored "turn left" sign is a "turn right" sign.
        scale = {"scale": 0.00390625, "mirror": False}
        data_pair(net, "ImageData", (scale, images("train.txt", 128, True)),
                  (scale, images("test.txt", 100, False)))
    else:
        input_layer(net, 1, 3, 32, 32)
    x = relu(net, "relu1", conv(net, "conv1", "data", 6, 3))
    x = pool(net, "pool1", x, MAX, 2, 2)
    x = relu(net, "relu2", conv(net, "conv2", x, 16, 3))
    x = pool(net, "pool2", x, MAX, 2, 2)  # 13x13 -> 7x7: Caffe rounds up
    x = relu(net, "relu3", fc(net, "fc3", x, 120))
    x = relu(net, "relu4", fc(net, "fc4", x, 84))
    x = fc(net, "fc5", x, 43)
    if train:
        classifier_losses(net, x)
    else:
        softmax(net, x)
    return net


def happy_face(train: bool) -> Net:
    net = Net("HappyFace", train)
    if train:
        scale = {"scale": 0.00390625}
        data_pair(net, "Data", ({**scale, "mirror": True}, lmdb("data/happy_face/train_lmdb", 16)),
                  (scale, lmdb("data/happy_face/test_lmdb", 150)))
    else:
        input_layer(net, 1, 3, 64, 64)
    x = conv(net, "conv1", "data", 32, 7, 1, 3)  # pad 3 keeps 64x64
    batch_norm(net, "bn_conv1", "scale_conv1", x)
    x = pool(net, "pool1", relu(net, "relu_conv1", x), MAX, 2, 2)
    x = fc(net, "fc", x, 1)
    if train:  # the loss applies the sigmoid itself, in a numerically stable form
        net.add("loss", "SigmoidCrossEntropyLoss", [x, "label"], "loss")
    else:
        net.add("prob", "Sigmoid", x)
    return net


def mnist_alexnet_small() -> Net:
    net = Net("MnistAlexNetSmall")
    x = input_layer(net, 1, 1, 28, 28)
    for i, width in enumerate((64, 128, 256), 1):
        x = relu(net, f"relu{i}", conv(net, f"conv{i}", x, width, 3, pad=1))
        x = lrn(net, f"norm{i}", pool(net, f"pool{i}", x, MAX, 2, 2))
        x = dropout(net, f"drop{i}", x, 0.2)
    for i in (4, 5):
        x = dropout(net, f"drop{i}", relu(net, f"relu{i}", fc(net, f"fc{i}", x, 1024)), 0.5)
    softmax(net, fc(net, "fc6", x, 10))
    return net


# ------------------------------------------------------------ mobile nets ----
# Names and shapes of the public Caffe ports (shicai/MobileNet-Caffe), so that
# their caffemodels load by layer name. Depthwise convolutions are plain
# Convolution layers with group == channels, as published.

def mobilenet_v1() -> Net:
    """MobileNet v1 (width 1.0): conv1, then 13 pairs of a 3x3 depthwise conv
    (stride on the depthwise conv) and a 1x1 pointwise conv, each followed by
    in-place BatchNorm + Scale + ReLU; global average pool, 1x1 conv fc7."""
    net = Net("MobileNet-v1")
    x = input_layer(net, 1, 3, 224, 224)
    x = conv(net, "conv1", x, 32, 3, 2, 1, bias=False)
    batch_norm(net, "conv1/bn", "conv1/scale", x)
    x = relu(net, "relu1", x)
    channels = 32
    # (tag, stride of the depthwise conv, pointwise outputs)
    pairs = [("2_1", 1, 64), ("2_2", 2, 128), ("3_1", 1, 128), ("3_2", 2, 256),
             ("4_1", 1, 256), ("4_2", 2, 512)] + [(f"5_{i}", 1, 512) for i in range(1, 6)]
    pairs += [("5_6", 2, 1024), ("6", 1, 1024)]
    for tag, stride, width in pairs:
        for part, args in (("dw", (channels, 3, stride, 1, channels)), ("sep", (width, 1))):
            x = conv(net, f"conv{tag}/{part}", x, *args, bias=False)
            batch_norm(net, f"conv{tag}/{part}/bn", f"conv{tag}/{part}/scale", x)
            x = relu(net, f"relu{tag}/{part}", x)
        channels = width
    x = pool(net, "pool6", x, AVE)
    softmax(net, conv(net, "fc7", x, 1000, 1))
    return net


def _conv_bn_v2(net, name, bottom, width, kernel, stride=1, pad=0, group=1,
                relu_name=None) -> str:
    """MobileNet v2 unit: bias-free conv, BatchNorm into ``<name>/bn``, Scale in
    place on it, optional ReLU; returns ``<name>/bn``."""
    x = conv(net, name, bottom, width, kernel, stride, pad, group, bias=False)
    bn = net.add(f"{name}/bn", "BatchNorm", x, f"{name}/bn",
                 batch_norm_param={"use_global_stats": True})
    net.add(f"{name}/scale", "Scale", bn, bn, scale_param={"bias_term": True})
    return relu(net, relu_name, bn) if relu_name else bn


def mobilenet_v2() -> Net:
    """MobileNet v2 (width 1.0) as in the public Caffe port: 17 inverted
    residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection, an
    Eltwise sum when shapes allow), conv6_4 to 1280, global average pool, fc7.

    The port puts the stride-2 of the 64-channel stage on the first block of
    the 96-channel stage (conv4_7) instead, so the 64-channel blocks run at
    28x28; weights are unaffected, and this keeps the port's outputs.
    """
    net = Net("MobileNet-v2")
    x = input_layer(net, 1, 3, 224, 224)
    x = _conv_bn_v2(net, "conv1", x, 32, 3, 2, 1, relu_name="relu1")
    channels = 32
    # (tag, expanded width, depthwise stride, output width)
    blocks = [("2_1", 32, 1, 16), ("2_2", 96, 2, 24), ("3_1", 144, 1, 24),
              ("3_2", 144, 2, 32), ("4_1", 192, 1, 32), ("4_2", 192, 1, 32),
              ("4_3", 192, 1, 64), ("4_4", 384, 1, 64), ("4_5", 384, 1, 64),
              ("4_6", 384, 1, 64), ("4_7", 384, 2, 96), ("5_1", 576, 1, 96),
              ("5_2", 576, 1, 96), ("5_3", 576, 2, 160), ("6_1", 960, 1, 160),
              ("6_2", 960, 1, 160), ("6_3", 960, 1, 320)]
    for tag, wide, stride, width in blocks:
        y = _conv_bn_v2(net, f"conv{tag}/expand", x, wide, 1, relu_name=f"relu{tag}/expand")
        y = _conv_bn_v2(net, f"conv{tag}/dwise", y, wide, 3, stride, 1, wide,
                        relu_name=f"relu{tag}/dwise")
        y = _conv_bn_v2(net, f"conv{tag}/linear", y, width, 1)
        if stride == 1 and width == channels:
            y = net.add(f"block_{tag}", "Eltwise", [x, y])
        x, channels = y, width
    x = _conv_bn_v2(net, "conv6_4", x, 1280, 1, relu_name="relu6_4")
    x = pool(net, "pool6", x, AVE)
    softmax(net, conv(net, "fc7", x, 1000, 1))
    return net


# ------------------------------------------------------ SSD detectors ----
# The SSD fork's head: for each source map, a loc and a conf convolution,
# each permuted to NHWC and flattened, and a PriorBox; the three kinds are
# concatenated, the scores softmaxed per prior, and DetectionOutput decodes
# and suppresses. Names follow the published deploy files, so their
# .caffemodel weights load by layer name.

SSD_VARIANCE = [0.1, 0.1, 0.2, 0.2]


def _ssd_head(net, prefix, source, num_classes, min_size, max_size, ratios, kernel, step=None):
    """loc/conf convs + Permute + Flatten, and the PriorBox, for one source map."""
    priors = (1 + 2 * len(ratios)) + (1 if max_size else 0)  # ratio 1, r and 1/r, sqrt(min*max)
    outs = []
    for kind, width in (("loc", 4 * priors), ("conf", num_classes * priors)):
        x = conv(net, f"{prefix}_mbox_{kind}", source, width, kernel, pad=kernel // 2)
        x = net.add(f"{prefix}_mbox_{kind}_perm", "Permute", x,
                    permute_param={"order": [0, 2, 3, 1]})
        outs.append(net.add(f"{prefix}_mbox_{kind}_flat", "Flatten", x,
                            flatten_param={"axis": 1}))
    p = {"min_size": float(min_size)}
    if max_size:
        p["max_size"] = float(max_size)
    p.update({"aspect_ratio": [float(r) for r in ratios], "flip": True, "clip": False,
              "variance": SSD_VARIANCE})
    if step:
        p["step"] = float(step)
    p["offset"] = 0.5
    outs.append(net.add(f"{prefix}_mbox_priorbox", "PriorBox", [source, "data"],
                        prior_box_param=p))
    return outs


def _ssd_output(net, heads, num_classes, nms_top_k, keep_top_k, threshold, clip=False) -> str:
    locs, confs, priors = zip(*heads)
    net.add("mbox_loc", "Concat", list(locs), concat_param={"axis": 1})
    net.add("mbox_conf", "Concat", list(confs), concat_param={"axis": 1})
    net.add("mbox_priorbox", "Concat", list(priors), concat_param={"axis": 2})
    x = net.add("mbox_conf_reshape", "Reshape", "mbox_conf",
                reshape_param={"shape": {"dim": [0, -1, num_classes]}})
    x = net.add("mbox_conf_softmax", "Softmax", x, softmax_param={"axis": 2})
    x = net.add("mbox_conf_flatten", "Flatten", x, flatten_param={"axis": 1})
    p = {"num_classes": num_classes, "share_location": True, "background_label_id": 0,
         "nms_param": {"nms_threshold": 0.45, "top_k": nms_top_k},
         "code_type": E("CENTER_SIZE"), "keep_top_k": keep_top_k,
         "confidence_threshold": threshold}
    if clip:
        p["clip"] = True   # OpenCV's extension: decoded boxes clamped to the image
    return net.add("detection_out", "DetectionOutput", ["mbox_loc", x, "mbox_priorbox"],
                   include={"phase": TEST}, detection_output_param=p)


def _bn_scale(net, bn_name, scale_name, bottom, top=None) -> str:
    """BatchNorm (no parameters: the phase decides), in place unless ``top`` is
    given, then an in-place Scale with bias."""
    x = net.add(bn_name, "BatchNorm", bottom, top or bottom)
    return net.add(scale_name, "Scale", x, x, scale_param={"bias_term": True})


def face_detector_ssd_res10() -> Net:
    """OpenCV's face detector: a ResNet-10-like trunk (one residual block
    per width, pre-activation) with an SSD head on six maps, 2 classes."""
    net = Net("ResNet10-SSD-300x300-face")
    x = input_layer(net, 1, 3, 300, 300)
    x = _bn_scale(net, "data_bn", "data_scale", x, "data_bn")
    x = conv(net, "conv1_h", x, 32, 7, 2, 3)
    _bn_scale(net, "conv1_bn_h", "conv1_scale_h", x)
    x = pool(net, "conv1_pool", relu(net, "conv1_relu", x), MAX, 3, 2)

    def unit(name, bottom, width, stride=1, pad=1, dilation=1, top=None) -> str:
        p = {"num_output": width, "bias_term": False, "pad": pad, "kernel_size": 3,
             "stride": stride}
        if dilation != 1:
            p["dilation"] = dilation
        return net.add(name, "Convolution", bottom, top, convolution_param=p)

    # layer_64_1: conv-bn-relu-conv, identity shortcut.
    y = unit("layer_64_1_conv1_h", x, 32)
    _bn_scale(net, "layer_64_1_bn2_h", "layer_64_1_scale2_h", y)
    y = unit("layer_64_1_conv2_h", relu(net, "layer_64_1_relu2", y), 32)
    x = net.add("layer_64_1_sum", "Eltwise", [y, x])
    # Three pre-activation blocks with 1x1 projection shortcuts; the names'
    # _h suffixes (and their absence) are the published model's.
    blocks = [  # width, first/second conv width, stride, names: bn1, conv1, bn2, conv2, expand
        ("128", 128, 2, "_h", "_h", "", "", "_h"),
        ("256", 256, 2, "", "", "", "", ""),
        ("512", (128, 256), 1, "", "_h", "_h", "_h", "_h"),
    ]
    for tag, width, stride, s_bn1, s_c1, s_bn2, s_c2, s_exp in blocks:
        w1, w2 = width if isinstance(width, tuple) else (width, width)
        b = f"layer_{tag}_1"
        pre = _bn_scale(net, f"{b}_bn1{s_bn1}", f"{b}_scale1{s_bn1}", x, f"{b}_bn1{s_bn1}")
        pre = relu(net, f"{b}_relu1", pre)
        y = unit(f"{b}_conv1{s_c1}", pre, w1, stride)
        _bn_scale(net, f"{b}_bn2{s_bn2}", f"{b}_scale2{s_bn2}", y)
        y = relu(net, f"{b}_relu2", y)
        if tag == "512":   # the last block keeps 19x19 and widens its view by dilation
            y = unit(f"{b}_conv2{s_c2}", y, w2, pad=2, dilation=2)
        else:
            y = unit(f"{b}_conv2{s_c2}", y, w2)
        shortcut = conv(net, f"{b}_conv_expand{s_exp}", pre, w2, 1, stride, bias=False)
        x = net.add(f"{b}_sum", "Eltwise", [y, shortcut])
    _bn_scale(net, "last_bn_h", "last_scale_h", x)
    fc7 = net.add("last_relu", "ReLU", x, "fc7")
    # Extra feature maps, 10x10 down to 5x5.
    x = fc7
    extras = {}
    for i, (mid, out, stride) in enumerate([(128, 256, 2), (64, 128, 2), (64, 128, 1),
                                            (64, 128, 1)], 6):
        x = relu(net, f"conv{i}_1_relu", conv(net, f"conv{i}_1_h", x, mid, 1))
        x = relu(net, f"conv{i}_2_relu", conv(net, f"conv{i}_2_h", x, out, 3, stride, 1))
        extras[i] = x
    norm = net.add("conv4_3_norm", "Normalize", "layer_256_1_bn1",
                   norm_param={"across_spatial": False, "scale_filler": constant(20),
                               "channel_shared": False})
    sources = [("conv4_3_norm", norm, 30, 60, [2], 8), ("fc7", fc7, 60, 111, [2, 3], 16),
               ("conv6_2", extras[6], 111, 162, [2, 3], 32),
               ("conv7_2", extras[7], 162, 213, [2, 3], 64),
               ("conv8_2", extras[8], 213, 264, [2], 100),
               ("conv9_2", extras[9], 264, 315, [2], 300)]
    heads = [_ssd_head(net, prefix, src, 2, lo, hi, ratios, 3, step)
             for prefix, src, lo, hi, ratios, step in sources]
    _ssd_output(net, heads, 2, nms_top_k=400, keep_top_k=200, threshold=0.2, clip=True)
    return net


def mobilenet_ssd() -> Net:
    """chuanqi305's MobileNet-SSD (VOC, 21 classes), the deploy file with
    BatchNorm merged into the convolutions (every conv has a bias)."""
    net = Net("MobileNet-SSD")
    x = input_layer(net, 1, 3, 300, 300)
    x = relu(net, "conv0/relu", conv(net, "conv0", x, 32, 3, 2, 1))
    channels = 32
    widths = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
             [(1024, 2), (1024, 1)]
    for i, (width, stride) in enumerate(widths, 1):
        # depthwise 3x3 (group = channels), then pointwise 1x1
        x = relu(net, f"conv{i}/dw/relu",
                 conv(net, f"conv{i}/dw", x, channels, 3, stride, 1, group=channels))
        x = relu(net, f"conv{i}/relu", conv(net, f"conv{i}", x, width, 1))
        channels = width
        if i == 11:
            conv11 = x
    conv13 = x
    extras = {}
    for i, (mid, out) in enumerate([(256, 512), (128, 256), (128, 256), (64, 128)], 14):
        x = relu(net, f"conv{i}_1/relu", conv(net, f"conv{i}_1", x, mid, 1))
        x = relu(net, f"conv{i}_2/relu", conv(net, f"conv{i}_2", x, out, 3, 2, 1))
        extras[i] = x
    sources = [("conv11", conv11, 60, None, [2]), ("conv13", conv13, 105, 150, [2, 3]),
               ("conv14_2", extras[14], 150, 195, [2, 3]),
               ("conv15_2", extras[15], 195, 240, [2, 3]),
               ("conv16_2", extras[16], 240, 285, [2, 3]),
               ("conv17_2", extras[17], 285, 300, [2, 3])]
    heads = [_ssd_head(net, prefix, src, 21, lo, hi, ratios, 1)
             for prefix, src, lo, hi, ratios in sources]
    _ssd_output(net, heads, 21, nms_top_k=100, keep_top_k=100, threshold=0.3)
    return net
