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
