"""Custom layers shared by the tests (importable, so saving and pickling work)."""

import keras
from keras import ops

import prunemix


@keras.saving.register_keras_serializable(package="prunemix_tests")
class GatedDense(prunemix.PrunableMixin, keras.layers.Layer):
    """Mixin layer with two prunable weights and an unpruned bias."""

    prunable_weights = ("kernel", "gate")

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.gate = self.add_weight(shape=(input_shape[-1], self.units), name="gate")
        self.bias = self.add_weight(shape=(self.units,), initializer="ones", name="bias")

    def call(self, x):
        return ops.matmul(x, self.kernel) * ops.sigmoid(ops.matmul(x, self.gate)) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="prunemix_tests")
@prunemix.prunable("w")
class Scale(keras.layers.Layer):
    """Decorated layer: one prunable weight `w`, one unpruned `offset`."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="w")
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="offset")

    def call(self, x):
        return x * self.w + self.offset


@keras.saving.register_keras_serializable(package="prunemix_tests")
class TfmotStyle(keras.layers.Layer):
    """A layer written for tfmot: implements `get_prunable_weights` itself."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

    def call(self, x):
        return ops.matmul(x, self.kernel)

    def get_prunable_weights(self):
        return [self.kernel]

    def get_config(self):
        return {**super().get_config(), "units": self.units}
