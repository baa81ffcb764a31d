"""The names of the COCO summary metrics a run reports, in pycocotools' order (AP points, 0-100):
one declaration for the evaluator, the trial tables and the dashboards."""

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
