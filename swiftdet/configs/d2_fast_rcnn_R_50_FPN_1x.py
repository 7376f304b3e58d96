"""detectron2's Fast R-CNN R50-FPN 1x (configs/COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml: MODEL.LOAD_PROPOSALS,
PROPOSAL_GENERATOR.NAME 'PrecomputedProposals'), in detectron2's conventions: Base-RCNN-FPN's box head on
precomputed proposals, no RPN; takes its model-zoo checkpoint after `swiftdet convert detectron2`. Give the proposal
files with the datasets: detectron2's (its rpn_R_50_FPN_1x's, from its model zoo) are expected beside the COCO
annotations, in datasets/coco/proposals/ (or set data.train.proposals / data.test.proposals); the best 2000 per
image are kept in training, 1000 in test (data.proposal_topk_*)."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_fpn


def config() -> Config:
    cfg = d2_rcnn_fpn()
    cfg.model.proposal_generator = "precomputed"
    # The file names of detectron2's DATASETS.PROPOSAL_FILES_TRAIN / TEST in fast_rcnn_R_50_FPN_1x.yaml.
    cfg.data.train.proposals = "datasets/coco/proposals/coco_2017_train_box_proposals_21bc3a.pkl"
    cfg.data.test.proposals = "datasets/coco/proposals/coco_2017_val_box_proposals_ee0dad.pkl"
    return cfg
