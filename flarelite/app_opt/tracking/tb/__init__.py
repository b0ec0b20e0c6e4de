"""TensorBoard tracking: TBAnalyticsReceiver (tb_receiver) and TBWriter (tb_writer); needs ``tensorboard``."""
