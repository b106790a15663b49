# The plugins the AMI template needs (Packer 1.7 and newer install them with `packer init .`).
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}
